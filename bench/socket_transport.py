"""Messages a second from the simulator's customer to the bot's handler, over HTTP and over the socket.

``python -m bench.socket_transport [--messages 1000] [--accounts 1,20] [--concurrency 32]``: about two
minutes.

The hub runs as users run it (``python -m hub up``, embedded database) with the simulator as WeCom
(``python -m hub sim``), each a child process; so is every puppet (``python -m hub puppet`` with
:mod:`bench.quiet_bot`, whose handler does nothing, on its own embedded database). For each account
count, an HTTP puppet and a socket puppet (``--transport ws``) run one after the other against the same
hub, each serving its own corp's accounts:

1. the puppet starts and every account registers (over HTTP, or proves itself over the socket);
2. one message per account warms the path up;
3. ``--messages`` customer messages are posted to the simulator, round-robin over the accounts,
   ``--concurrency`` at a time; each makes the simulator send WeCom's callback to the hub, which
   delivers it to the puppet, which pulls with ``kf/sync_msg`` and hands each message to the handler.

The rate is messages over the time from the first post to the last handler call (the puppet's
``wxkf_puppet_messages_handled_total`` counter, read from its ``/metrics``). With it, each run prints
the CPU milliseconds per message of the simulator, the hub and the puppet, each as "process +
its embedded database" (from ``/proc``, over the same interval), and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.manager_support import AGENT_ID, Child, Corp, free_ports, machine, run_benchmark
from bench.puppet_support import cpu_split, metric_total

HANDLED = re.compile(r'^wxkf_puppet_messages_handled_total\{outcome="done"\} ([0-9.e+]+)$', re.M)


def puppet_toml(corp: Corp, port: int, manager: str, data_dir: Path, transport: str) -> str:
    accounts = json.dumps(list(corp.accounts))
    return "\n".join(
        [
            f"port = {port}",
            f'manager = "{manager}"',
            f'transport = "{transport}"',
            f'data_dir = "{data_dir}"',
            "[[apps]]",
            f'corp_id = "{corp.corp_id}"',
            f'secret = "{corp.secret}"',
            f'token = "{corp.keys.token}"',
            f'encoding_aes_key = "{corp.keys.aes_key}"',
            f"accounts = {accounts}",
            "",
        ]
    )


async def handled(http: aiohttp.ClientSession, port: int) -> int:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        found = HANDLED.search(await response.text())
    return int(float(found.group(1))) if found else 0


async def wait_handled(http: aiohttp.ClientSession, port: int, count: int, timeout: float = 60.0) -> float:
    """Poll the puppet's counter (in another process: nothing to wait on) until ``count``; the time."""
    deadline = time.perf_counter() + timeout
    while (seen := await handled(http, port)) < count:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{seen} of {count} messages handled after {timeout:g} s")
        await asyncio.sleep(0.02)
    return time.perf_counter()


async def wait_registered(http: aiohttp.ClientSession, hub_url: str, corp: Corp) -> None:
    async with asyncio.timeout(60):
        for kf in corp.accounts:
            while True:
                async with http.get(
                    f"{hub_url}/puppetWxkfManager/puppetWxkfInfo/{kf}",
                    headers={"authorization": f"Bearer {corp.secret}"},  # it answers the puppet only
                ) as response:
                    if response.status == 200 and (await response.json()).get("online"):
                        break
                await asyncio.sleep(0.05)


async def say(http: aiohttp.ClientSession, sim_url: str, corp: Corp, kf: str, n: int) -> None:
    url = f"{sim_url}/sim/corps/{corp.corp_id}/accounts/{kf}/messages"
    body = {"external_userid": f"wmbench{n % 50:03d}", "msgtype": "text", "text": {"content": f"m{n}"}}
    async with http.post(url, json=body) as response:
        if response.status >= 300:
            raise RuntimeError(f"simulator refused a message: {response.status} {await response.text()}")


async def one_run(
    http: aiohttp.ClientSession,
    workdir: Path,
    sim_url: str,
    hub_url: str,
    corp: Corp,
    transport: str,
    messages: int,
    concurrency: int,
    others: dict[str, int],
) -> dict[str, Any]:
    patch = f"{sim_url}/sim/corps/{corp.corp_id}/apps/{AGENT_ID}"
    async with (
        aiohttp.ClientSession() as control,
        control.patch(patch, json={"callback_url": f"{hub_url}/callback/{corp.corp_id}"}) as response,
    ):
        response.raise_for_status()
    (port,) = free_ports(1)
    name = f"{transport}-{len(corp.accounts)}"
    config = workdir / f"{name}.toml"
    config.write_text(puppet_toml(corp, port, hub_url, workdir / f"{name}-data", transport))
    puppet = Child(
        f"puppet {name}",
        [sys.executable, "-m", "hub", "puppet", "--bot", "bench.quiet_bot:bot", "--config", str(config)],
        workdir / f"{name}.log",
        env={"WECOM_API_BASE": f"{sim_url}/cgi-bin", "WXKF_LOG_LEVEL": "WARNING"},
    )
    puppet.start()
    try:
        await puppet.wait_http(f"http://127.0.0.1:{port}/healthz")
        await wait_registered(http, hub_url, corp)
        for index, kf in enumerate(corp.accounts):  # warm-up
            await say(http, sim_url, corp, kf, index)
        await wait_handled(http, port, len(corp.accounts))
        base = await handled(http, port)
        slots = asyncio.Semaphore(concurrency)
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        pulls_before = await metric_total(metrics_url, "wxkf_puppet_pulls_total")
        processes = {**others, "puppet": puppet.pid}
        cpu_before = {name: cpu_split(pid) for name, pid in processes.items()}

        async def post(n: int) -> None:
            async with slots:
                await say(http, sim_url, corp, corp.accounts[n % len(corp.accounts)], n)

        started = time.perf_counter()
        await asyncio.gather(*(post(n) for n in range(messages)))
        posted = time.perf_counter()
        done = await wait_handled(http, port, base + messages)
        cpu = {name: cpu_split(pid) for name, pid in processes.items()}
        pulls = await metric_total(metrics_url, "wxkf_puppet_pulls_total") - pulls_before
    finally:
        puppet.stop()
    seconds = done - started
    # CPU ms per message of each process and (after the "+") of its embedded database
    cpu_ms = {
        name: "+".join(
            f"{1000 * (now - before) / messages:.2f}"
            for now, before in zip(cpu[name], cpu_before[name], strict=True)
        )
        for name in processes
    }
    return {
        "transport": transport,
        "accounts": len(corp.accounts),
        "messages": messages,
        "posted_in_s": round(posted - started, 2),
        "handled_in_s": round(seconds, 2),
        "messages_per_s": round(messages / seconds, 1),
        "cpu_ms_per_msg": cpu_ms,
        "sync_msg_per_msg": round(pulls / messages, 2),
        "load_average": round(os.getloadavg()[0], 2),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    counts = [int(part) for part in args.accounts.split(",")]
    plan = [(count, transport) for count in counts for transport in ("http", "ws")]
    corps = {step: Corp.random(step[0]) for step in plan}
    workdir = Path(tempfile.mkdtemp(prefix="wxkf-bench-sockets-"))
    seed = {"config": {"gettoken_rate": None}, "corps": [corp.seed()["corps"][0] for corp in corps.values()]}
    (workdir / "seed.json").write_text(json.dumps(seed))
    sim_port, hub_port = free_ports(2)
    sim_url, hub_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{hub_port}"
    python = sys.executable
    sim = Child(
        "simulator",
        [python, "-m", "hub", "sim", "--port", str(sim_port), "--seed", str(workdir / "seed.json")],
        workdir / "simulator.log",
        env={"WXKF_LOG_LEVEL": "WARNING"},  # as in the other benchmarks: WeCom's logging is not ours
    )
    hub = Child(
        "hub",
        [python, "-m", "hub", "up"],
        workdir / "hub.log",
        env={
            "WXKF_DATA_DIR": str(workdir / "hub-data"),
            "WECOM_API_BASE": f"{sim_url}/cgi-bin",
            "HOST": "127.0.0.1",
            "PORT": str(hub_port),
            "WXKF_LOG_LEVEL": "WARNING",
        },
    )
    runs = []
    try:
        sim.start()
        hub.start()
        await sim.wait_http(sim_url + "/sim/config")
        await hub.wait_http(hub_url + "/healthz")
        for step in plan:  # a session per run: an idle connection kept across a run's start goes stale
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                run = await one_run(
                    http,
                    workdir,
                    sim_url,
                    hub_url,
                    corps[step],
                    step[1],
                    args.messages,
                    args.concurrency,
                    {"simulator": sim.pid, "hub": hub.pid},
                )
                print(json.dumps(run), flush=True)
                runs.append(run)
    finally:
        for child in (hub, sim):
            child.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return {"machine": machine(), "concurrency": args.concurrency, "runs": runs}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--accounts", default="1,20", help="comma-separated account counts")
    parser.add_argument("--concurrency", type=int, default=32, help="customer messages posted at once")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    return parser.parse_args()


if __name__ == "__main__":
    run_benchmark(main(parse_args()), "customer message to handler: HTTP and WebSocket puppets")
