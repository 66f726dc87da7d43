"""Memory of the hub with 10,000 registered accounts (issue 4). Goal: < 200 MB RSS.

``python -m bench.manager_memory [--accounts 10000]`` (``--quick``: 1,000 accounts).

The simulator is seeded with one app managing ``--accounts`` accounts. Every account registers
through the real compat route (50 at a time; the manager proves each against ``kf/account/list``,
whose listing it caches per app for 60 s, so the whole fleet costs one listing), then one callback per
account is sent so that every mailbox exists and every account has been dispatched and leased. The
puppets are path-addressed on a few ports of one process (``http://127.0.0.1:PORT/pN``).

RSS (``VmRSS``) and peak RSS (``VmHWM``) are read from ``/proc/<pid>/status`` of the hub process
(``python -m hub up``) and, separately, of the embedded SecantusDB server (its child): after start,
after registration, after dispatch, and once the idle leases are released (``idle_release`` 15 s).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aiohttp

from bench.manager_support import (
    PuppetRecords,
    Stack,
    cpu_speed,
    machine,
    post_callback,
    proc_status,
    register_all,
    run_benchmark,
    session,
    stack,
)

MB = 1024  # kB per MB


def memory(run: Stack) -> dict[str, float]:
    hub = proc_status(run.hub.pid)
    out = {"hub_rss_mb": round(hub["VmRSS"] / MB, 1), "hub_peak_rss_mb": round(hub["VmHWM"] / MB, 1)}
    db_pid = run.db_pid()
    if db_pid is not None:
        db = proc_status(db_pid)
        out["database_rss_mb"] = round(db["VmRSS"] / MB, 1)
        out["database_peak_rss_mb"] = round(db["VmHWM"] / MB, 1)
    return out


async def one_callback_each(http: aiohttp.ClientSession, run: Stack, concurrency: int = 50) -> float:
    """One callback per account (nonce = account index); returns the seconds until all were delivered."""
    records = PuppetRecords(run)
    queue = iter(enumerate(run.corp.accounts))
    started = time.perf_counter()

    async def sender() -> None:
        for index, kf in queue:
            query, body = run.corp.callback(kf, str(index), f"mem{index}")
            status = await post_callback(http, run, query, body)
            if status != 200:
                raise RuntimeError(f"callback refused with HTTP {status}")

    await asyncio.gather(*(sender() for _ in range(concurrency)))
    pending = {str(index) for index in range(len(run.corp.accounts))}
    async with asyncio.timeout(600):
        while pending:
            for delivery in await records.fetch(http):
                pending.discard(delivery.nonce or "")
            await asyncio.sleep(0.1)
    return time.perf_counter() - started


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": machine(), "accounts": args.accounts}
    async with (
        stack(args.accounts, puppet_ports=4, keep=args.keep) as run,
        session() as http,
    ):
        report["workdir"] = str(run.workdir)
        report["after_start"] = memory(run)
        with cpu_speed(run.workdir) as speed:  # rates depend on how fast the host runs us meanwhile
            started = time.monotonic_ns()
            _, register_s = await register_all(http, run, concurrency=50)
            registered = time.monotonic_ns()
            report["register_s"] = round(register_s, 1)
            report["registrations_per_s"] = round(args.accounts / register_s)
            report["after_registration"] = memory(run)
            dispatch_s = await one_callback_each(http, run)
            report["one_callback_each_delivered_s"] = round(dispatch_s, 1)
            report["after_dispatch"] = memory(run)
            report["cpu_speed_while_registering"] = speed.summary(started, registered)
            report["cpu_speed_while_dispatching"] = speed.summary(registered, time.monotonic_ns())
        await asyncio.sleep(args.idle)
        report[f"after_{args.idle:.0f}s_idle"] = memory(run)
    report["machine"]["load_average_after"] = machine()["load_average"]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.manager_memory", description=__doc__)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds idle before the last reading")
    parser.add_argument("--quick", action="store_true", help="1,000 accounts, 5 s idle")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, database)")
    args = parser.parse_args()
    if args.quick:
        args.accounts, args.idle = 1_000, 5.0
    run_benchmark(main_async(args), "manager memory")


if __name__ == "__main__":
    main()
