"""Resident memory per idle account in one ``wxkf puppet`` process.

``python -m bench.puppet_memory [--accounts 1,1000]``

For each account count, one after the other in the same run: a fresh ``wxkf sim`` with one corp app
managing N accounts, and ``wxkf puppet --bot examples.echo:bot`` serving all of them as WeCom's
callback target, on an embedded SecantusDB in a fresh data dir (its own process, not counted). Once
the puppet says it listens and has made every account's start-up pull (its ``/metrics``), nothing
more happens: no customer writes. The puppet's RSS (``VmRSS``) is read five times, 1 s apart, and
the median reported; the cost of an idle account is the difference between two counts divided by the
difference in accounts.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench.puppet_support import (
    puppets_toml,
    simulator_state,
    simulator_up,
    spawn,
    start_simulator,
    stop,
    wait_for,
)
from tests.support.services import free_port


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def pulls(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("wxkf_puppet_pulls_total{")
    )


async def run(accounts: int, work: Path) -> dict[str, Any]:
    port = free_port()
    state, app = simulator_state(accounts, f"http://127.0.0.1:{port}/callback", customers=2)
    config = work / "puppets.toml"
    config.write_text(puppets_toml(app, accounts, f'port = {port}\ndata_dir = "{work / "data"}"\n'))
    sim_port, sim = start_simulator(work, state)
    env = {"WECOM_API_BASE": f"http://127.0.0.1:{sim_port}/cgi-bin", "WXKF_LOG_LEVEL": "INFO"}
    puppet = None
    try:
        await simulator_up(sim_port)
        puppet = spawn(
            ["puppet", "--bot", "examples.echo:bot", "--config", str(config)], env, work / "puppet.log"
        )
        async with httpx.AsyncClient(timeout=60) as http:

            async def started() -> bool:
                if "puppet listening" not in (work / "puppet.log").read_text(errors="replace"):
                    return False
                return pulls((await http.get(f"http://127.0.0.1:{port}/metrics")).text) >= accounts

            await wait_for(started, "every start-up pull", timeout=300)
        samples = []
        for _ in range(5):
            await asyncio.sleep(1.0)  # a benchmark's sampling interval, not a synchronisation
            samples.append(rss_kib(puppet.pid))
        return {"accounts": accounts, "rss_kib": statistics.median(samples), "samples": samples}
    finally:
        stop(puppet, sim)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", default="1,1000")
    options = parser.parse_args()
    os.environ.pop("MONGO_URI", None)  # the embedded database, as a user starts it
    results = []
    for accounts in (int(n) for n in options.accounts.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(asyncio.run(run(accounts, Path(tmp))))
        print(json.dumps(results[-1]), flush=True)
    for low, high in itertools.pairwise(results):
        per = (high["rss_kib"] - low["rss_kib"]) / (high["accounts"] - low["accounts"])
        print(
            json.dumps(
                {"from": low["accounts"], "to": high["accounts"], "kib_per_idle_account": round(per, 1)}
            )
        )


if __name__ == "__main__":
    main()
