"""Customer message → bot handler latency at a steady rate spread over many accounts.

``python -m bench.puppet_latency [--rate 100] [--duration 30] [--accounts 20] [--modes direct,inhub]``

For each mode, one after the other in the same run: a fresh ``wxkf sim`` (token-less pulls and the
send limit lifted) with one corp app managing ``--accounts`` accounts, two customers each, and

* ``direct``: ``wxkf puppet --bot bench.puppet_support:bot`` as WeCom's callback target;
* ``inhub``: ``wxkf up --puppets puppets.toml --bot bench.puppet_support:bot``: WeCom calls the hub's
  gateway, the manager delivers to the hub's own puppets over loopback, they pull and hand over;

each on an embedded SecantusDB in a fresh data dir, started as a user starts them. Open loop: message
*n* is written through the simulator's control API at ``n / rate`` seconds whatever the earlier writes
are doing, round-robin over the accounts and their customers, its text carrying the wall-clock time
just before the write. The bot records the time each message reached its handler; the latency is the
difference (one machine, one clock). Reported per mode: p50, p90, p99 and max, how many messages
reached the handler (every one must, once), CPU per message, and ``kf/sync_msg`` calls per message
(below 1 when a running pull absorbed the callbacks that came in meanwhile).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.puppet_support import (
    cpu_seconds,
    customer_id,
    lines,
    log_says,
    message_path,
    metric_total,
    percentile,
    puppets_toml,
    simulator_state,
    simulator_up,
    spawn,
    start_simulator,
    stop,
    wait_for,
)
from tests.support.services import free_port

CUSTOMERS = 2  # per account


async def offer(base_url: str, rate: float, duration: float, accounts: int) -> float:
    """Open loop: message n written at n / rate s; returns the rate the writes actually started at.
    aiohttp, not httpx: httpx's pool costs O(waiting requests) per request, which made this load
    generator the bottleneck as soon as the simulator's answers slowed."""
    loop = asyncio.get_running_loop()
    total = int(rate * duration)
    writes: list[asyncio.Task[None]] = []
    connector = aiohttp.TCPConnector(limit=500)
    async with aiohttp.ClientSession(base_url, connector=connector) as http:

        async def write(n: int) -> None:
            account, customer = n % accounts, (n // accounts) % CUSTOMERS
            text = f"{n} {time.time():.6f}"
            body = {
                "external_userid": customer_id(account, CUSTOMERS, customer),
                "msgtype": "text",
                "text": {"content": text},
            }
            async with http.post(message_path(account), json=body) as answer:
                answer.raise_for_status()

        start = loop.time()
        for n in range(total):
            delay = start + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            writes.append(asyncio.create_task(write(n)))
        offered = total / (loop.time() - start)
        await asyncio.gather(*writes)
    return offered


async def settled(journal: Path, total: int, quiet: float = 15.0) -> None:
    """Until every message reached the handler, or none has for ``quiet`` seconds (the rest then
    waits for a later callback of its account, or the safety pull: reported as not handled)."""
    seen, last_change = -1, time.monotonic()
    while (count := len(lines(journal))) < total and time.monotonic() - last_change < quiet:
        if count != seen:
            seen, last_change = count, time.monotonic()
        await asyncio.sleep(0.2)


async def run(mode: str, rate: float, duration: float, accounts: int, work: Path) -> dict[str, Any]:
    port = free_port()
    callback = f"http://127.0.0.1:{port}" + ("/callback" if mode == "direct" else "/callback/wwbench")
    state, app = simulator_state(accounts, callback, CUSTOMERS)
    journal = work / "journal"
    config = work / "puppets.toml"
    if mode == "direct":
        config.write_text(puppets_toml(app, accounts, f'port = {port}\ndata_dir = "{work / "data"}"\n'))
        args = ["puppet", "--bot", "bench.puppet_support:bot", "--config", str(config)]
    else:
        config.write_text(puppets_toml(app, accounts))
        args = ["up", "--puppets", str(config), "--bot", "bench.puppet_support:bot", "--port", str(port)]
    sim_port, sim = start_simulator(work, state)
    env = {
        "WECOM_API_BASE": f"http://127.0.0.1:{sim_port}/cgi-bin",
        "BENCH_JOURNAL": str(journal),
        "WXKF_DATA_DIR": str(work / "data"),
        "WXKF_LOG_LEVEL": "INFO",
    }
    served = None
    try:
        await simulator_up(sim_port)
        served = spawn(args, env, work / "served.log")

        ready = log_says(work / "served.log", "puppet listening", "puppet account(s)")
        await wait_for(ready, f"{mode} to start")
        before = cpu_seconds(served.pid), cpu_seconds(sim.pid)
        pulls_url = f"http://127.0.0.1:{port}/metrics"  # the puppet's, or the hub's (one registry)
        pulls_before = await metric_total(pulls_url, "wxkf_puppet_pulls_total")
        offered = await offer(f"http://127.0.0.1:{sim_port}", rate, duration, accounts)
        total = int(rate * duration)
        await settled(journal, total)
        served_cpu = cpu_seconds(served.pid) - before[0]
        sim_cpu = cpu_seconds(sim.pid) - before[1]
        pulls = await metric_total(pulls_url, "wxkf_puppet_pulls_total") - pulls_before
        latencies = sorted(
            (float(arrived) - float(written)) * 1000
            for arrived, _, written in (line.split(" ") for line in lines(journal))
        )
        handled = {line.split(" ")[1] for line in lines(journal)}
        return {
            "mode": mode,
            "accounts": accounts,
            "offered_per_s": offered,
            "messages": total,
            "handled": len(latencies),
            "handled_twice": len(latencies) - len(handled),
            "p50_ms": statistics.median(latencies),
            "p90_ms": percentile(latencies, 0.90),
            "p99_ms": percentile(latencies, 0.99),
            "max_ms": latencies[-1],
            # CPU per message, which the machine's other load changes much less than latency
            "served_cpu_ms_per_msg": served_cpu * 1000 / max(1, len(latencies)),
            "sim_cpu_ms_per_msg": sim_cpu * 1000 / total,
            # below 1: pulls already running absorbed callbacks (each callback wakes one otherwise)
            "pulls_per_msg": pulls / max(1, len(latencies)),
            "load_average": os.getloadavg()[0],
        }
    finally:
        stop(served, sim)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--accounts", type=int, default=20)
    parser.add_argument("--modes", default="direct,inhub")
    options = parser.parse_args()
    os.environ.pop("MONGO_URI", None)  # the embedded database, as a user starts it
    for mode in options.modes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            result = asyncio.run(run(mode, options.rate, options.duration, options.accounts, Path(tmp)))
        print(
            json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}), flush=True
        )


if __name__ == "__main__":
    main()
