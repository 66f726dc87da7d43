"""Messages per second from the simulator's customers into a puppet's bot handler (HTTP transport).

``python -m bench.puppet_throughput [--accounts 1,20] [--messages 1000] [--senders 20]``

For each account count: a fresh ``wxkf sim`` (token-less pulls and the send limit lifted) with one corp
app managing N accounts, and ``wxkf puppet --bot bench.puppet_throughput:bot`` on an embedded SecantusDB
in a fresh data dir, both started as a user starts them and acting as WeCom's direct callback target. The
customers (one per account) write ``--messages`` texts in total through the simulator's control API,
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
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from puppets import Bot, TextMessage
from tests.support.services import free_port
from tests.support.wecom_callbacks import new_aes_key

bot = Bot()


@bot.on_text
async def arrived(message: TextMessage) -> None:
    """Append ``<time> <text>``: the benchmark's only view into the puppet."""
    with open(os.environ["BENCH_JOURNAL"], "a") as journal:  # noqa: ASYNC230 - a small append
        journal.write(f"{time.time():.6f} {message.text}\n")


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "hub", *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def wait_for(check: object, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def write_all(http: httpx.AsyncClient, messages: int, senders: int, accounts: int) -> float:
    """The customers write ``messages`` texts, round-robin over the accounts; returns writes/s."""
    queue = list(range(messages))
    started = time.time()

    async def sender() -> None:
        while queue:
            n = queue.pop()
            account = n % accounts
            body = {"external_userid": f"wm{account:04d}", "msgtype": "text", "text": {"content": f"m{n}"}}
            response = await http.post(f"/sim/corps/wwbench/accounts/wk{account:04d}/messages", json=body)
            response.raise_for_status()

    await asyncio.gather(*(sender() for _ in range(senders)))
    return messages / (time.time() - started)


async def write_at(http: httpx.AsyncClient, messages: int, rate: float, accounts: int) -> dict[int, float]:
    """Open loop: message *n* is written at *start + n/rate*, whatever the system does; returns the
    planned times (latency counts from them, so a slow write is not hidden)."""
    start = time.time() + 0.5
    planned = {n: start + n / rate for n in range(messages)}

    async def write(n: int) -> None:
        await asyncio.sleep(max(0.0, planned[n] - time.time()))
        account = n % accounts
        body = {"external_userid": f"wm{account:04d}", "msgtype": "text", "text": {"content": f"m{n}"}}
        response = await http.post(f"/sim/corps/wwbench/accounts/wk{account:04d}/messages", json=body)
        response.raise_for_status()

    await asyncio.gather(*(write(n) for n in range(messages)))
    return planned


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run(
    accounts: int, messages: int, senders: int, work: Path, mode: str, rate: float
) -> dict[str, Any]:
    backlog = mode == "backlog"
    sim_port, puppet_port = free_port(), free_port()
    corp: dict[str, Any] = {
        "corpid": "wwbench",
        "apps": [
            {
                "agentid": 1000002,
                "name": "kf",
                "secret": "bench-secret",
                "token": secrets.token_hex(8),
                "encoding_aes_key": new_aes_key(),
                "callback_url": f"http://127.0.0.1:{puppet_port}/callback",
            }
        ],
        "accounts": [{"open_kfid": f"wk{n:04d}", "name": f"A{n}"} for n in range(accounts)],
        "customers": [{"external_userid": f"wm{n:04d}"} for n in range(accounts)],
    }
    seed = work / "seed.json"
    seed.write_text(
        json.dumps({"config": {"sync_tokenless_rate": None, "send_limit": 100000}, "corps": [corp]})
    )
    app: dict[str, Any] = corp["apps"][0]
    config = work / "puppets.toml"
    account_list = ", ".join(f'"wk{n:04d}"' for n in range(accounts))
    config.write_text(
        f'port = {puppet_port}\ndata_dir = "{work / "puppet-data"}"\n[[apps]]\ncorp_id = "wwbench"\n'
        f'secret = "bench-secret"\ntoken = "{app["token"]}"\nencoding_aes_key = "{app["encoding_aes_key"]}"\n'
        f"accounts = [{account_list}]\n"
    )
    journal = work / "journal"
    env = {"WECOM_API_BASE": f"http://127.0.0.1:{sim_port}/cgi-bin", "BENCH_JOURNAL": str(journal)}
    env.pop("MONGO_URI", None)
    sim = spawn(["sim", "--port", str(sim_port), "--seed", str(seed)], {}, work / "sim.log")
    puppet = None
    try:
        timeout = httpx.Timeout(60.0, pool=None)  # open-loop writes queue for a connection, not fail
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sim_port}", timeout=timeout) as http:

            async def sim_up() -> bool:
                try:
                    return (await http.get("/sim/state")).is_success
                except httpx.TransportError:
                    return False

            await wait_for(sim_up, "the simulator")
            if backlog:  # written before the puppet runs, with no callbacks: its start-up pull finds them
                patched = await http.patch("/sim/corps/wwbench/apps/1000002", json={"callback_url": None})
                patched.raise_for_status()
                write_rate = await write_all(http, messages, senders, accounts)
            puppet = spawn(
                ["puppet", "--bot", "bench.puppet_throughput:bot", "--config", str(config)],
                env,
                work / "puppet.log",
            )

            async def puppet_up() -> bool:
                return "puppet listening" in (work / "puppet.log").read_text(errors="replace")

            await wait_for(puppet_up, "the puppet")
            started = time.time()
            planned: dict[int, float] = {}
            if mode == "latency":
                planned = await write_at(http, messages, rate, accounts)
                write_rate = rate
            elif not backlog:
                write_rate = await write_all(http, messages, senders, accounts)
            written = time.time()

            async def all_handled() -> bool:
                return len(lines(journal)) >= messages

            await wait_for(all_handled, "every message in the handler", timeout=600)
            arrivals = sorted(float(line.split(" ", 1)[0]) for line in lines(journal))
            handled = {line.split(" ", 1)[1] for line in lines(journal)}
            assert len(handled) == messages, "a message was handled twice or not at all"
            if planned:
                latencies = [
                    float(at) - planned[int(text[1:])]
                    for at, text in (line.split(" ", 1) for line in lines(journal))
                ]
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
                "messages": messages,
                "writes_per_s": write_rate,
                "handled_per_s": messages / (arrivals[-1] - started),
                "last_after_writes_s": arrivals[-1] - written,
            }
    finally:
        for process in (puppet, sim):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", default="1,20")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument(
        "--modes",
        default="live,backlog",
        help="live: callbacks as customers write; backlog: the start-up pull; latency: open loop at --rate",
    )
    parser.add_argument("--rate", type=float, default=100.0, help="messages/s in latency mode")
    parser.add_argument("--keep", action="store_true", help="keep the work dir with the processes' logs")
    options = parser.parse_args()
    for mode in options.modes.split(","):
        for accounts in (int(n) for n in options.accounts.split(",")):
            kept = tempfile.mkdtemp(prefix="puppet-bench-") if options.keep else None
            with contextlib.nullcontext(kept) if kept else tempfile.TemporaryDirectory() as tmp:
                if kept:
                    print(f"work dir (logs): {tmp}")
                result = asyncio.run(
                    run(accounts, options.messages, options.senders, Path(tmp), mode, options.rate)
                )
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
