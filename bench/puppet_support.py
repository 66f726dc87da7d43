"""What the puppet benchmarks share: the simulator's corp, the puppets' config, the bot, the processes.

The simulator is seeded with one corp app (``wwbench``, agent 1000002) managing ``wk0000``…
accounts, each with its customers (``wm0000`` with one customer per account, ``wm0000a``,
``wm0000b``… with more), token-less pulls and the send limit lifted. :data:`bot` appends
``<arrival time> <text>`` to ``$BENCH_JOURNAL`` for each text: the benchmarks' only view into the
puppet. Every service runs as a user starts it (``python -m hub ...``), on an embedded database in a
fresh data dir.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import string
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from puppets import Bot, TextMessage
from tests.support.services import free_port
from tests.support.wecom_callbacks import new_aes_key

CORP_ID = "wwbench"
AGENT_ID = 1000002
SECRET = "bench-secret"

bot = Bot()


@bot.on_text
async def arrived(message: TextMessage) -> None:
    """Append ``<time> <text>``."""
    with open(os.environ["BENCH_JOURNAL"], "a") as journal:  # noqa: ASYNC230 - a small append
        journal.write(f"{time.time():.6f} {message.text}\n")


def account_id(n: int) -> str:
    return f"wk{n:04d}"


def customer_id(account: int, customers: int, index: int = 0) -> str:
    """Customer ``index`` of ``account``: ``wm0003`` when accounts have one customer, else ``wm0003b``."""
    return f"wm{account:04d}" + ("" if customers == 1 else string.ascii_lowercase[index])


def simulator_state(
    accounts: int, callback_url: str | None, customers: int = 1
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(the simulator's --seed, the app)`` for ``accounts`` accounts of ``customers`` customers each."""
    if not 1 <= customers <= len(string.ascii_lowercase):
        raise ValueError("1 to 26 customers per account")
    app = {
        "agentid": AGENT_ID,
        "name": "kf",
        "secret": SECRET,
        "token": secrets.token_hex(8),
        "encoding_aes_key": new_aes_key(),
        "callback_url": callback_url,
    }
    corp = {
        "corpid": CORP_ID,
        "apps": [app],
        "accounts": [{"open_kfid": account_id(n), "name": f"A{n}"} for n in range(accounts)],
        "customers": [
            {"external_userid": customer_id(n, customers, c)}
            for n in range(accounts)
            for c in range(customers)
        ],
    }
    return {"config": {"sync_tokenless_rate": None, "send_limit": 100000}, "corps": [corp]}, app


def puppets_toml(app: dict[str, Any], accounts: int, extra: str = "") -> str:
    """A ``--config`` serving the app's first ``accounts`` accounts; ``extra``: lines before ``[[apps]]``."""
    account_list = ", ".join(f'"{account_id(n)}"' for n in range(accounts))
    return (
        f'{extra}[[apps]]\ncorp_id = "{CORP_ID}"\nsecret = "{SECRET}"\ntoken = "{app["token"]}"\n'
        f'encoding_aes_key = "{app["encoding_aes_key"]}"\naccounts = [{account_list}]\n'
    )


def message_path(account: int) -> str:
    """The simulator's control route by which a customer of ``account`` writes."""
    return f"/sim/corps/{CORP_ID}/accounts/{account_id(account)}/messages"


# -- processes ------------------------------------------------------------------------------------


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``python -m hub <args>`` with ``env`` added, its output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "hub", *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def start_simulator(work: Path, state: dict[str, Any]) -> tuple[int, subprocess.Popen[bytes]]:
    """``wxkf sim`` seeded with ``state``, logging warnings only (a line per callback is a good share
    of its CPU); returns its port and process."""
    port = free_port()
    (work / "seed.json").write_text(json.dumps(state))
    args = ["sim", "--port", str(port), "--seed", str(work / "seed.json")]
    return port, spawn(args, {"WXKF_LOG_LEVEL": "WARNING"}, work / "sim.log")


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def simulator_up(port: int) -> None:
    async with aiohttp.ClientSession() as http:

        async def answers() -> bool:
            try:
                async with http.get(f"http://127.0.0.1:{port}/sim/state") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(answers, "the simulator")


def log_says(log: Path, *phrases: str) -> Callable[[], Awaitable[bool]]:
    """A check for :func:`wait_for`: has ``log`` got one of ``phrases`` (a service's ready line)?"""

    async def check() -> bool:
        try:
            text = log.read_text(errors="replace")  # noqa: ASYNC240 - a small local file
        except FileNotFoundError:
            return False
        return any(phrase in text for phrase in phrases)

    return check


def stop(*processes: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM each in turn (an orderly stop), SIGKILL after 60 s."""
    for process in processes:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its children (the embedded database), from /proc."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """``(pid's own, its children's)`` user + system CPU seconds, from /proc (the children of a hub
    or puppet: its embedded database)."""
    tick = os.sysconf("SC_CLK_TCK")
    own = children = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used = (int(fields[11]) + int(fields[12])) / tick
        if int(entry.name) == pid:
            own += used
        elif int(fields[1]) == pid:  # fields[1] is the parent's pid
            children += used
    return own, children


# -- results --------------------------------------------------------------------------------------


async def metric_total(url: str, name: str) -> float:
    """The sum of every series of counter ``name`` on the Prometheus page at ``url``."""
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        page = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith((name + "{", name + " "))
    )


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]
