"""Backlog drain: events queued for offline puppets, then the puppets come back (issue 4).

``python -m bench.manager_drain [--accounts 100] [--events 10000]`` (``--quick``: 1,000 events).
Goal: drain at ≥ 1,000 events/s.

1. 100 puppets register while their process is down (registration does not call the puppet).
2. 10,000 callbacks (100 per account) are POSTed to ``/callback/{corpId}``: one sender per account,
   each sending its account's callbacks one after another, so that each account's newest callback is
   the one it sent last. The first delivery attempt per account is refused, so the manager marks the
   puppet offline and parks its mailbox; the rest queue up behind it. Under ``wxkf up`` a 200 means
   the callback is already in the manager's durable mailbox, so the backlog is complete once every
   callback is acknowledged.
3. The puppet process comes back and every puppet sends a heartbeat (``POST
   /puppetWxkfManager/heartbeat`` with its webhook secret), as our puppets do on start; a heartbeat
   flows the queue at once. Drained = every puppet has received a delivery of its account's newest
   callback. ``events_per_s`` = events / (drained − puppets back).

The manager coalesces a backlog into one delivery per account (the puppet pulls everything with
``kf/sync_msg``), so draining 10,000 events is ~100 deliveries. Then the same again without
heartbeats (``--no-probe-run`` skips it): the manager finds the puppets by probing offline ones
(``GET {endpoint}/callback``; first after 5 s, then backing off 10, 20, 40 ... s up to 300 s), and the
report splits the time into waiting for the probe and draining after it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aiohttp

from bench.manager_support import (
    ADMIN_TOKEN,
    HEARTBEAT,
    PuppetRecords,
    Stack,
    cpu_usage,
    machine,
    percentile,
    post_callback,
    print_report,
    register_all,
    run_benchmark,
    session,
    stack,
)


async def enqueue(
    http: aiohttp.ClientSession, run: Stack, per_account: int, first_nonce: int
) -> tuple[dict[int, str], float]:
    """Queue ``per_account`` callbacks for every account; returns each account's newest nonce and the s."""
    newest: dict[int, str] = {}

    async def sender(account: int) -> None:
        kf = run.corp.accounts[account]
        for k in range(per_account):
            nonce = str(first_nonce + account * per_account + k)
            query, body = run.corp.callback(kf, nonce, f"drain{nonce}")
            status = await post_callback(http, run, query, body)
            if status != 200:
                raise RuntimeError(f"callback refused with HTTP {status}")
            newest[account] = nonce

    started = time.perf_counter()
    await asyncio.gather(*(sender(account) for account in range(len(run.corp.accounts))))
    return newest, time.perf_counter() - started


async def wait_all_offline(http: aiohttp.ClientSession, run: Stack, timeout: float = 60.0) -> None:
    """Until the manager has seen every puppet down (its first delivery refused)."""
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    async with asyncio.timeout(timeout):
        for kf in run.corp.accounts:
            while True:
                url = f"{run.hub_url}/puppetWxkfManager/puppetWxkfInfo/{kf}"
                async with http.get(url, headers=headers) as response:
                    info = await response.json()
                if not info["online"]:
                    break
                await asyncio.sleep(0.1)


async def wait_drained(
    http: aiohttp.ClientSession, records: PuppetRecords, newest: dict[int, str], timeout: float
) -> int:
    """Poll the puppets' record until every account's newest nonce arrived; returns that time (ns)."""
    pending = set(newest.values())
    async with asyncio.timeout(timeout):
        while True:
            for delivery in await records.fetch(http):
                if delivery.method == "POST" and delivery.nonce in pending:
                    pending.discard(delivery.nonce)
                    if not pending:
                        return delivery.received_ns
            await asyncio.sleep(0.02)


async def heartbeat_all(http: aiohttp.ClientSession, run: Stack, secrets: list[str]) -> list[float]:
    """Every puppet's heartbeat at once; returns each answer's time in ms."""

    async def beat(kf: str, secret: str) -> float:
        started = time.perf_counter()
        body = {"corpId": run.corp.corp_id, "kfId": kf}
        headers = {"authorization": f"Bearer {secret}"}
        async with http.post(run.hub_url + HEARTBEAT, json=body, headers=headers) as response:
            if response.status != 200:
                raise RuntimeError(f"heartbeat refused: {response.status} {await response.text()}")
        return (time.perf_counter() - started) * 1000

    return list(
        await asyncio.gather(*(beat(kf, s) for kf, s in zip(run.corp.accounts, secrets, strict=True)))
    )


async def one_drain(
    http: aiohttp.ClientSession,
    run: Stack,
    secrets: list[str],
    per_account: int,
    first_nonce: int,
    heartbeats: bool,
) -> dict[str, Any]:
    newest, enqueue_s = await enqueue(http, run, per_account, first_nonce)
    events = per_account * len(run.corp.accounts)
    await wait_all_offline(http, run)
    records = PuppetRecords(run)
    pids = {"hub": run.hub.pid, "database": run.db_pid()}
    with cpu_usage(pids) as cpu:
        await run.start_puppets()
        back_ns = time.monotonic_ns()
        beats = await heartbeat_all(http, run, secrets) if heartbeats else []
        drained_ns = await wait_drained(http, records, newest, timeout=30 if heartbeats else 400)
    drain_s = (drained_ns - back_ns) / 1e9
    posts = [d for d in records.deliveries if d.method == "POST"]
    result: dict[str, Any] = {
        "mode": "heartbeat" if heartbeats else "probe",
        "events": events,
        "accounts": len(run.corp.accounts),
        "enqueue_s": round(enqueue_s, 2),
        "intake_callbacks_per_s": round(events / enqueue_s),
        "back_to_drained_s": round(drain_s, 3),
        "events_per_s": round(events / drain_s),
        "deliveries": len(posts),
        "hub_cpu_s_while_draining": round(cpu["hub"], 2),
        "database_cpu_s_while_draining": round(cpu["database"], 2),
    }
    if heartbeats:
        result["heartbeat_answer_ms"] = {"p50": round(percentile(beats, 50), 1), "max": round(max(beats), 1)}
    else:
        probes = [d.received_ns for d in records.deliveries if d.method == "GET" and d.received_ns >= back_ns]
        first_probe = min(probes) if probes else drained_ns
        result["waiting_for_first_probe_s"] = round((first_probe - back_ns) / 1e9, 3)
        result["first_probe_to_drained_s"] = round((drained_ns - first_probe) / 1e9, 3)
    return result


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    per_account = args.events // args.accounts
    report: dict[str, Any] = {"machine": machine(), "runs": []}
    async with (
        stack(args.accounts, puppet_ports=args.accounts, start_puppets=False, keep=args.keep) as run,
        session() as http,
    ):
        report["workdir"] = str(run.workdir)
        secrets, register_s = await register_all(http, run)
        report["register_s"] = round(register_s, 2)
        modes = [True] if args.no_probe_run else [True, False]
        first_nonce = 1
        for heartbeats in modes:
            result = await one_drain(http, run, secrets, per_account, first_nonce, heartbeats)
            first_nonce += per_account * args.accounts
            report["runs"].append(result)
            print_report(f"drain ({result['mode']})", result)
            run.stop_puppets()
    report["machine"]["load_average_after"] = machine()["load_average"]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.manager_drain", description=__doc__)
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--events", type=int, default=10_000, help="queued events in all")
    parser.add_argument("--quick", action="store_true", help="1,000 events")
    parser.add_argument("--no-probe-run", action="store_true", help="only the heartbeat run")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, database)")
    args = parser.parse_args()
    if args.quick:
        args.events = 1_000
    run_benchmark(main_async(args), "manager drain")


if __name__ == "__main__":
    main()
