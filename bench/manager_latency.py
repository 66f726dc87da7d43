"""End-to-end latency, customer callback → puppet received, at fixed offered rates (issue 4).

``python -m bench.manager_latency [--rates 200,500] [--duration 30] [--warmup 5] [--accounts 100]``
(``--quick``: 5 s at each rate after 2 s of warm-up). Goal: p99 < 100 ms at 500 callbacks/s.

The benchmark acts as WeCom: an open-loop aiohttp client POSTs signed, encrypted ``kf_msg_or_event``
callbacks to the hub's ``/callback/{corpId}`` at planned times (``i / rate`` apart, whatever the hub
answers; a late send is still measured from its planned time, so a stalled hub cannot hide its
stall). Each callback is for one of ``--accounts`` accounts, drawn at random, each served by its own
fast puppet (its own port, in one separate process).

The manager coalesces: per account at most one delivery is in flight, and whatever arrives meanwhile
becomes the next one, because the puppet pulls *everything* new on any callback. So the latency of a
callback is measured as::

    (first time the account's puppet received a delivery of this callback or of a later one of the
     same account) − (this callback's planned send time)

which is when the puppet would have pulled the customer's message. ``deliveries_per_callback`` is the
coalescing ratio (1.0 = every callback delivered on its own). ``gateway_ack`` is WeCom's view: planned
send time → the hub's 200. Callbacks planned during the warm-up are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import gc
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bench import raw_http
from bench.manager_support import (
    PuppetRecords,
    SpeedSamples,
    Stack,
    cpu_speed,
    cpu_usage,
    machine,
    percentile,
    print_report,
    register_all,
    run_benchmark,
    session,
    slowest_seconds,
    stack,
)

MS = 1e6  # ns per ms


@dataclass(slots=True)
class Sent:
    account: int
    seq: int  # position among this account's callbacks
    nonce: str
    request: bytes  # the whole HTTP request, built ahead of time
    planned_ns: int = 0
    sent_ns: int = 0
    acked_ns: int = 0
    status: int = 0


def prepare(run: Stack, rate: int, seconds: float, first_nonce: int, rng: random.Random) -> list[Sent]:
    """Every callback of one run, encrypted and signed ahead of time (the client must keep up)."""
    hub = urlsplit(run.hub_url)
    counts: dict[int, int] = defaultdict(int)
    out = []
    for i in range(int(rate * seconds)):
        account = rng.randrange(len(run.corp.accounts))
        nonce = str(first_nonce + i)
        query, body = run.corp.callback(run.corp.accounts[account], nonce, f"bench{nonce}")
        target = f"/callback/{run.corp.corp_id}?{query}"
        request = raw_http.request_bytes("POST", target, hub.netloc, body, "text/xml")
        out.append(Sent(account, counts[account], nonce, request))
        counts[account] += 1
    return out


async def offer(run: Stack, callbacks: list[Sent], rate: int) -> None:
    """Open loop: send callback i at start + i/rate, never waiting for answers."""
    in_flight: set[asyncio.Task[None]] = set()  # only those: thousands of finished tasks kept are GC work
    hub = urlsplit(run.hub_url)
    client = raw_http.Client(hub.hostname or "127.0.0.1", hub.port or 80)

    async def send(sent: Sent) -> None:
        sent.sent_ns = time.monotonic_ns()
        try:
            async with asyncio.timeout(30):
                sent.status = await client.send(sent.request)
        except (OSError, TimeoutError):
            sent.status = -1
        sent.acked_ns = time.monotonic_ns()

    interval = 1e9 / rate
    start = time.monotonic_ns() + 50_000_000
    for i, sent in enumerate(callbacks):
        sent.planned_ns = start + int(i * interval)
    i = 0
    while i < len(callbacks):
        now = time.monotonic_ns()
        while i < len(callbacks) and callbacks[i].planned_ns <= now:
            task = asyncio.create_task(send(callbacks[i]))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            i += 1
        if i < len(callbacks):
            await asyncio.sleep(max(0.0, (callbacks[i].planned_ns - time.monotonic_ns()) / 1e9))
    await asyncio.gather(*in_flight)
    client.close()


async def wait_delivered(
    http: aiohttp.ClientSession, records: PuppetRecords, callbacks: list[Sent], timeout: float
) -> bool:
    """Until every account's newest callback was delivered, or nothing arrived for 3 s (coalesced)."""
    last = {sent.account: sent.nonce for sent in callbacks}
    pending = set(last.values())
    quiet_since = time.monotonic()
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        new = await records.fetch(http)
        pending.difference_update(d.nonce for d in new)
        if new:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 3.0:
            break
        await asyncio.sleep(0.1)
    return not pending


def latencies(callbacks: list[Sent], records: PuppetRecords) -> tuple[list[tuple[Sent, float]], int, int]:
    """Latency in ms per covered callback (see module doc), uncovered callbacks, deliveries of this run."""
    by_nonce = {sent.nonce: sent for sent in callbacks}
    per_account: dict[int, list[tuple[int, int]]] = defaultdict(list)  # (seq, received_ns)
    deliveries = 0
    for delivery in records.deliveries:
        sent = by_nonce.get(delivery.nonce or "") if delivery.method == "POST" else None
        if sent is not None:
            per_account[sent.account].append((sent.seq, delivery.received_ns))
            deliveries += 1
    covering: dict[int, tuple[list[int], list[int]]] = {}
    for account, items in per_account.items():
        items.sort()
        seqs = [seq for seq, _ in items]
        suffix_min = [0] * len(items)
        best = 1 << 62
        for j in range(len(items) - 1, -1, -1):
            best = min(best, items[j][1])
            suffix_min[j] = best
        covering[account] = (seqs, suffix_min)
    values, uncovered = [], 0
    for sent in callbacks:
        seqs, suffix_min = covering.get(sent.account, ([], []))
        j = bisect.bisect_left(seqs, sent.seq)
        if j == len(seqs):
            uncovered += 1
            continue
        values.append((sent, (suffix_min[j] - sent.planned_ns) / MS))
    return values, uncovered, deliveries


def speed_report(speed: SpeedSamples, covered: list[tuple[Sent, float]]) -> dict[str, Any]:
    """How fast the host let the machine run, and the latency of callbacks sent while it ran fast
    and while it ran slow (bench.cpu_speed)."""
    if not covered:
        return {}
    probe = speed.summary(covered[0][0].planned_ns, covered[-1][0].planned_ns)
    fast_values: list[float] = []
    slow_values: list[float] = []
    for sent, value in covered:
        (slow_values if speed.slow_at(sent.planned_ns) else fast_values).append(value)
    return {
        "probe_work_ms": probe,
        "slow_share": round(len(slow_values) / len(covered), 3),
        "callback_to_puppet_ms_while_fast": summary(fast_values),
        "callback_to_puppet_ms_while_slow": summary(slow_values),
    }


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50), 2),
        "p90": round(percentile(values, 90), 2),
        "p99": round(percentile(values, 99), 2),
        "max": round(max(values), 2) if values else float("nan"),
    }


async def one_rate(
    http: aiohttp.ClientSession,
    run: Stack,
    records: PuppetRecords,
    rate: int,
    warmup: float,
    duration: float,
    first_nonce: int,
    rng: random.Random,
    speed: SpeedSamples,
) -> dict[str, Any]:
    callbacks = prepare(run, rate, warmup + duration, first_nonce, rng)
    # The load client must not measure its own pauses: keep the pre-generated callbacks out of the
    # garbage collector's full passes (they stalled sends by up to ~140 ms).
    gc.collect()
    gc.freeze()
    pids = {
        "hub": run.hub.pid,
        "database": run.db_pid(),
        "puppets": run.puppets.pid,
        "simulator": run.sim.pid,
        "load_generator": os.getpid(),
    }
    started = time.monotonic()
    with cpu_usage(pids) as cpu:
        await offer(run, callbacks, rate)
        wall = time.monotonic() - started
    complete = await wait_delivered(http, records, callbacks, timeout=60)
    await records.fetch(http)
    measured = callbacks[int(rate * warmup) :]
    covered, uncovered, _ = latencies(measured, records)
    values = [value for _, value in covered]
    _, _, deliveries = latencies(callbacks, records)
    errors = sum(1 for sent in callbacks if sent.status != 200)
    return {
        "offered_rate": rate,
        "measured_callbacks": len(measured),
        "warmup_s": warmup,
        "duration_s": duration,
        "callback_to_puppet_ms": summary(values),
        "cpu_speed": speed_report(speed, covered),
        "gateway_ack_ms": summary([(s.acked_ns - s.planned_ns) / MS for s in measured]),
        "client_send_lag_ms": summary([(s.sent_ns - s.planned_ns) / MS for s in measured]),
        "slowest_acks": slowest_seconds(
            ((s.planned_ns, s.acked_ns) for s in callbacks), callbacks[0].planned_ns
        ),
        "non_200_answers": errors,
        "uncovered_callbacks": uncovered,
        "every_account_got_its_newest": complete,
        "deliveries_per_callback": round(deliveries / len(callbacks), 3),
        "cpu_percent_of_one_core": {name: round(100 * used / wall, 1) for name, used in cpu.items()},
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(4)
    report: dict[str, Any] = {"machine": machine(), "accounts": args.accounts, "runs": []}
    async with (
        stack(args.accounts, puppet_ports=args.accounts, keep=args.keep) as run,
        session() as http,
    ):
        # one probe for the whole benchmark: its fastest sample is the reference for every rate
        with cpu_speed(run.workdir) as speed:
            report["workdir"] = str(run.workdir)
            await register_all(http, run)
            records = PuppetRecords(run)
            first_nonce = 1
            for rate in args.rates:
                result = await one_rate(
                    http, run, records, rate, args.warmup, args.duration, first_nonce, rng, speed
                )
                first_nonce += int(rate * (args.warmup + args.duration))
                report["runs"].append(result)
                print_report(f"{rate} callbacks/s", result)
                await asyncio.sleep(2)  # let the lease loop and group commits settle between rates
    report["machine"]["load_average_after"] = machine()["load_average"]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.manager_latency", description=__doc__)
    parser.add_argument("--rates", default="200,500", help="offered callbacks/s, comma-separated")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per rate")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before each")
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="5 s per rate after 2 s of warm-up")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, database)")
    args = parser.parse_args()
    args.rates = [int(rate) for rate in args.rates.split(",")]
    if args.quick:
        args.duration, args.warmup = 5.0, 2.0
    run_benchmark(main_async(args), "manager latency")


if __name__ == "__main__":
    main()
