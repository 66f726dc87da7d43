"""Many accounts behind one slow puppet host (issue 10, item 12).

``python -m bench.puppet_host [--accounts 100] [--rate 50] [--duration 23] [--delay 2] [--drain 10]
[--connections-per-host N]``: about a minute.

One puppet process serves every account (the normal shape of a Python puppet host), and it is slow
but alive: every request is answered ``success`` after ``--delay`` seconds. The hub runs as users run
it (``python -m hub up``, embedded database, the simulator as WeCom's API; :mod:`bench.manager_support`).

1. Every account registers with an endpoint on that one host (``http://127.0.0.1:PORT/p{i}``).
2. Open loop: ``--rate`` encrypted callbacks a second to ``/callback/{corpId}`` for ``--duration``
   seconds, round-robin over the accounts (callback *n* is for account *n mod accounts*; its query's
   ``nonce`` is *n*, which the manager forwards to the puppet unchanged).
3. Then ``--drain`` seconds more without load.

An event counts as delivered once its account's puppet has received a delivery of it or of a newer
callback of the same account (the puppet pulls everything new with ``kf/sync_msg``). The report gives
events delivered by the end of the load and by the end of the drain, the accounts whose puppet the
hub marked offline ("puppet ... unreachable" in its log; parked until a probe finds it again), the
deliveries the host had in flight at most, and the delay from a callback to the delivery covering it.

``--connections-per-host`` sets ``WXKF_DELIVERY_CONNECTIONS_PER_HOST`` for the hub (default: the
hub's own default). To measure a previous version, run this file from a checkout of it: the hub is
started from the current directory.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from bench.manager_support import (
    ADMIN_TOKEN,
    Stack,
    free_port,
    machine,
    percentile,
    post_callback,
    register_all,
    run_benchmark,
    session,
    stack,
)

UNREACHABLE = re.compile(r"puppet (\S+) unreachable")


@dataclass
class SlowHost:
    """The one puppet process: answers everything after ``delay`` s, records each delivery's nonce."""

    delay: float
    arrivals: list[tuple[float, int, int]] = field(default_factory=list)  # (monotonic s, account, nonce)
    in_flight: int = 0
    most_in_flight: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await request.read()
            nonce = request.query.get("nonce")
            if nonce is not None:
                self.arrivals.append((time.monotonic(), int(request.match_info["index"]), int(nonce)))
            await asyncio.sleep(self.delay)  # the puppet's own slowness
            return web.Response(text="success")
        finally:
            self.in_flight -= 1

    async def start(self) -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_route("*", "/p{index:[0-9]+}/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        return runner, port


async def load(
    http: aiohttp.ClientSession, run: Stack, rate: float, duration: float
) -> tuple[list[float], int, int]:
    """Open loop: callback *n* planned at ``start + n / rate``; returns the planned times, 200s, errors."""
    accounts = run.corp.accounts
    total = int(rate * duration)
    prepared = [run.corp.callback(accounts[n % len(accounts)], str(n), f"host{n}") for n in range(total)]
    start = time.monotonic() + 0.5
    planned = [start + n / rate for n in range(total)]
    ok = errors = 0

    async def send(n: int) -> None:
        nonlocal ok, errors
        await asyncio.sleep(max(0.0, planned[n] - time.monotonic()))
        try:
            status = await post_callback(http, run, *prepared[n])
        except aiohttp.ClientError:
            status = 0
        if status == 200:
            ok += 1
        else:
            errors += 1

    await asyncio.gather(*(send(n) for n in range(total)))
    return planned, ok, errors


def delivered_by(host: SlowHost, accounts: int, total: int, until: float) -> int:
    """Events (of ``total``) covered by a delivery of the same or a newer callback of their account."""
    newest = [-1] * accounts
    for at, index, nonce in host.arrivals:
        if at <= until:
            newest[index] = max(newest[index], nonce)
    return sum(1 for n in range(total) if newest[n % accounts] >= n)


def covering_delays(host: SlowHost, planned: list[float], accounts: int) -> list[float]:
    """For every covered event: seconds from its planned send to the first delivery that covers it."""
    delays = []
    by_account: dict[int, list[tuple[float, int]]] = {}
    for at, index, nonce in sorted(host.arrivals):
        by_account.setdefault(index, []).append((at, nonce))
    for n, sent in enumerate(planned):
        for at, nonce in by_account.get(n % accounts, []):
            if nonce >= n:
                delays.append(at - sent)
                break
    return delays


async def offline_accounts(http: aiohttp.ClientSession, run: Stack) -> int:
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    async with http.get(run.hub_url + "/admin/puppets", headers=headers) as response:
        puppets = (await response.json())["puppets"]
    return sum(1 for p in puppets if not p.get("online"))


async def main(args: argparse.Namespace) -> dict[str, Any]:
    host = SlowHost(args.delay)
    runner, port = await host.start()
    hub_env = {}
    if args.connections_per_host:
        hub_env["WXKF_DELIVERY_CONNECTIONS_PER_HOST"] = str(args.connections_per_host)
    try:
        async with stack(args.accounts, 1, start_puppets=False, hub_env=hub_env) as run, session() as http:
            run.puppet_ports = [port]  # every account's endpoint: http://127.0.0.1:PORT/p{i}
            _, registration_s = await register_all(http, run)
            planned, ok, errors = await load(http, run, args.rate, args.duration)
            load_end = time.monotonic()
            offline_after_load = await offline_accounts(http, run)
            await asyncio.sleep(args.drain)  # the measurement window, not synchronisation
            drain_end = time.monotonic()
            offline_after_drain = await offline_accounts(http, run)
            marked = set(UNREACHABLE.findall(run.hub.tail(50_000_000)))
    finally:
        await runner.cleanup()
    total = len(planned)
    delays = covering_delays(host, planned, args.accounts)
    return {
        "machine": machine(),
        "settings": {
            "accounts": args.accounts,
            "rate": args.rate,
            "duration_s": args.duration,
            "puppet_delay_s": args.delay,
            "drain_s": args.drain,
            "connections_per_host": args.connections_per_host or "hub default",
        },
        "registration_s": round(registration_s, 2),
        "callbacks": {"sent": total, "acknowledged": ok, "errors": errors},
        "deliveries_received": len(host.arrivals),
        "host_most_in_flight": host.most_in_flight,
        "events_delivered_by_end_of_load": delivered_by(host, args.accounts, total, load_end),
        "events_delivered_by_end_of_drain": delivered_by(host, args.accounts, total, drain_end),
        "accounts_marked_unreachable": len(marked),
        "accounts_offline_at_end_of_load": offline_after_load,
        "accounts_offline_at_end_of_drain": offline_after_drain,
        "callback_to_covering_delivery_s": {
            "p50": round(percentile(delays, 50), 2),
            "p99": round(percentile(delays, 99), 2),
            "max": round(max(delays), 2) if delays else None,
        },
    }


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.puppet_host", description=__doc__)
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50.0, help="callbacks per second")
    parser.add_argument("--duration", type=float, default=23.0, help="seconds of load")
    parser.add_argument("--delay", type=float, default=2.0, help="seconds the puppet takes per request")
    parser.add_argument("--drain", type=float, default=10.0, help="seconds watched after the load")
    parser.add_argument("--connections-per-host", type=int, default=0, help="0: the hub's default")
    args = parser.parse_args()
    run_benchmark(main(args), "many accounts behind one slow puppet host")


if __name__ == "__main__":
    cli()
