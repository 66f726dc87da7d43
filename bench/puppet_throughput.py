"""Messages per second from the simulator's customers into a puppet's bot handler (HTTP transport).

``python -m bench.puppet_throughput [--accounts 1,20] [--messages 1000] [--senders 20] [--customers 1]``

For each account count: a fresh ``wxkf sim`` (:mod:`bench.puppet_support`) with one corp app managing
N accounts, and ``wxkf puppet --bot bench.puppet_support:bot`` on an embedded SecantusDB in a fresh data
dir, both started as a user starts them, the puppet as WeCom's direct callback target. The customers
(``--customers`` per account) write ``--messages`` texts in total through the simulator's control API,
``--senders`` at a time; each write makes the simulator send a signed callback. The bot records the
wall-clock time at which each message reached its handler. Reported: messages into handlers per second
(first write to last handler call) and the write rate the simulator itself sustained, which bounds it.
In ``latency`` mode (``--modes latency --accounts 20 --rate 100``) messages are written open loop at
``--rate``, and each one's latency runs from its planned write time to its handler call.
In ``backlog`` mode the messages are written first, with no callbacks, and the clock starts when the
puppet is up: its start-up pull drains them, which measures the puppet without the simulator's writes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
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


async def write(http: aiohttp.ClientSession, n: int, accounts: int, customers: int) -> None:
    """Message ``m<n>``, round-robin over the accounts and then over their customers."""
    account, customer = n % accounts, (n // accounts) % customers
    body = {
        "external_userid": customer_id(account, customers, customer),
        "msgtype": "text",
        "text": {"content": f"m{n}"},
    }
    async with http.post(message_path(account), json=body) as response:
        response.raise_for_status()


async def write_all(
    http: aiohttp.ClientSession, messages: int, senders: int, accounts: int, customers: int
) -> float:
    """The customers write ``messages`` texts, ``senders`` at a time; returns writes/s."""
    queue = list(range(messages))
    started = time.time()

    async def sender() -> None:
        while queue:
            await write(http, queue.pop(), accounts, customers)

    await asyncio.gather(*(sender() for _ in range(senders)))
    return messages / (time.time() - started)


async def write_at(
    http: aiohttp.ClientSession, messages: int, rate: float, accounts: int, customers: int
) -> dict[int, float]:
    """Open loop: message *n* is written at *start + n/rate*, whatever the system does; returns the
    planned times (latency counts from them, so a slow write is not hidden)."""
    start = time.time() + 0.5
    planned = {n: start + n / rate for n in range(messages)}

    async def planned_write(n: int) -> None:
        await asyncio.sleep(max(0.0, planned[n] - time.time()))
        await write(http, n, accounts, customers)

    await asyncio.gather(*(planned_write(n) for n in range(messages)))
    return planned


async def run(
    accounts: int, messages: int, senders: int, work: Path, mode: str, rate: float, customers: int
) -> dict[str, Any]:
    backlog = mode == "backlog"
    puppet_port = free_port()
    callback = None if backlog else f"http://127.0.0.1:{puppet_port}/callback"
    state, app = simulator_state(accounts, callback, customers)
    config = work / "puppets.toml"
    listen = f'port = {puppet_port}\ndata_dir = "{work / "puppet-data"}"\n'
    config.write_text(puppets_toml(app, accounts, listen))
    journal = work / "journal"
    sim_port, sim = start_simulator(work, state)
    env = {"WECOM_API_BASE": f"http://127.0.0.1:{sim_port}/cgi-bin", "BENCH_JOURNAL": str(journal)}
    puppet = None
    try:
        await simulator_up(sim_port)
        connector = aiohttp.TCPConnector(limit=0)  # open-loop writes must not queue for a connection
        async with aiohttp.ClientSession(f"http://127.0.0.1:{sim_port}", connector=connector) as http:
            if backlog:  # written before the puppet runs, with no callbacks: its start-up pull finds them
                write_rate = await write_all(http, messages, senders, accounts, customers)
            puppet = spawn(
                ["puppet", "--bot", "bench.puppet_support:bot", "--config", str(config)],
                env,
                work / "puppet.log",
            )
            await wait_for(log_says(work / "puppet.log", "puppet listening"), "the puppet")
            cpu_before = cpu_seconds(puppet.pid), cpu_seconds(sim.pid)
            started = time.time()
            planned: dict[int, float] = {}
            if mode == "latency":
                planned = await write_at(http, messages, rate, accounts, customers)
                write_rate = rate
            elif not backlog:
                write_rate = await write_all(http, messages, senders, accounts, customers)
            written = time.time()

        async def all_handled() -> bool:
            return len(lines(journal)) >= messages

        await wait_for(all_handled, "every message in the handler", timeout=600)
        puppet_cpu = cpu_seconds(puppet.pid) - cpu_before[0]
        sim_cpu = cpu_seconds(sim.pid) - cpu_before[1]
        arrivals = sorted(float(line.split(" ", 1)[0]) for line in lines(journal))
        handled = {line.split(" ", 1)[1] for line in lines(journal)}
        assert len(handled) == messages, "a message was handled twice or not at all"
        if planned:
            entries = (line.split(" ", 1) for line in lines(journal))
            latencies = [float(at) - planned[int(text[1:])] for at, text in entries]
            return {
                "mode": mode,
                "accounts": accounts,
                "messages": messages,
                "rate": rate,
                "p50_ms": 1000 * percentile(latencies, 0.5),
                "p99_ms": 1000 * percentile(latencies, 0.99),
                "max_ms": 1000 * max(latencies),
            }
        return {
            "mode": mode,
            "accounts": accounts,
            "customers": customers,
            "messages": messages,
            "writes_per_s": write_rate,
            "handled_per_s": messages / (arrivals[-1] - started),
            "last_after_writes_s": arrivals[-1] - written,
            # CPU per message (the puppet with its database, the simulator), which the machine's
            # other load changes much less than the rates
            "puppet_cpu_ms_per_msg": puppet_cpu * 1000 / messages,
            "sim_cpu_ms_per_msg": sim_cpu * 1000 / messages,
            "load_average": os.getloadavg()[0],
        }
    finally:
        stop(puppet, sim)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", default="1,20")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--customers", type=int, default=1, help="customers per account")
    parser.add_argument(
        "--modes",
        default="live,backlog",
        help="live: callbacks as customers write; backlog: the start-up pull; latency: open loop at --rate",
    )
    parser.add_argument("--rate", type=float, default=100.0, help="messages/s in latency mode")
    parser.add_argument("--keep", action="store_true", help="keep the work dir with the processes' logs")
    options = parser.parse_args()
    os.environ.pop("MONGO_URI", None)  # the embedded database, as a user starts it
    for mode in options.modes.split(","):
        for accounts in (int(n) for n in options.accounts.split(",")):
            kept = tempfile.mkdtemp(prefix="puppet-bench-") if options.keep else None
            with contextlib.nullcontext(kept) if kept else tempfile.TemporaryDirectory() as tmp:
                if kept:
                    print(f"work dir (logs): {tmp}")
                result = asyncio.run(
                    run(
                        accounts,
                        options.messages,
                        options.senders,
                        Path(tmp),
                        mode,
                        options.rate,
                        options.customers,
                    )
                )
            rounded = {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}
            print(json.dumps(rounded), flush=True)


if __name__ == "__main__":
    main()
