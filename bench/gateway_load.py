"""Encrypted kf callbacks into the gateway, against a bare Starlette endpoint as the ceiling (issue 3).

``python -m bench.gateway_load [--targets bare,gateway,up] [--rates 200,500,1000] [--duration 30]
[--wrk-connections 64,256] [--wrk-duration 30] [--profile 500,wrk] [--keep]``; ``--quick`` is a smoke
run (3 s per rate, 5 s of wrk). Needs ``wrk`` (``apt-get install wrk``); ``--profile`` needs py-spy.

Targets, each started as its own process exactly as a user would, then stopped:

* ``bare``: :mod:`bench.bare_app`, uvicorn through the same :func:`wxkf.server.serve`; reads the body,
  answers ``success``. The ceiling.
* ``gateway``: ``wxkf gateway``, embedded SecantusDB in a fresh ``WXKF_DATA_DIR``, no
  ``MANAGER_ENDPOINT``: each callback is verified, decrypted, parsed and stored durably (the inbox
  document has no target, state ``unrouted``), nothing is forwarded.
* ``up``: ``wxkf up``, the gateway plus the in-process manager: before the 200, the gateway hands each kf
  event to the manager, which logs it in ``manager_events``; no puppet is registered, so every event is
  parked as unroutable.

The corp app is registered through the admin API (``POST /admin/apps``). Every callback is unique (its
own ``Token`` and ``CreateTime``, so its own event id) and is signed and encrypted before the clock
starts, so the client does no crypto while it measures.

Two kinds of load:

* open loop (aiohttp): callback ``i`` is sent at ``start + i / rate`` whatever the server answers, and
  its latency is measured from that planned time, so a server that stalls cannot slow the client down
  and hide its own queueing (coordinated omission). The first ``--warmup`` seconds are not counted.
* closed loop (wrk, ``bench/wrk.lua``): C connections, each sending the next pre-generated callback
  as soon as the previous one is answered: the maximum throughput.

After each run the stored callbacks are counted (the inbox; the manager's event log for ``up``) in
the embedded database (its port is in the data dir's ``secantusd.log``): documents stored must equal
200s given (wrk may stop with up to one request per connection stored but not yet answered, which it
does not count).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from pymongo import AsyncMongoClient

from bench import profile
from bench.manager_support import (
    Child,
    children,
    cpu_usage,
    free_port,
    machine,
    percentile,
    print_report,
    slowest_seconds,
)
from bench.wrk import run_wrk, write_requests
from gateway.inbox import COLLECTION as INBOX
from manager.mailbox import EVENTS as MANAGER_EVENTS
from tests.support.wecom_callbacks import CorpAppKeys, kf_event_xml, signed_post
from wxkf.database import LOG_FILE, EmbeddedMongo

TARGETS = ("bare", "gateway", "up")
DB_NAME = "wxkf"
TIMEOUT = -1  # status recorded for a request that got no answer within the client timeout
CONNECTION_ERROR = -2
WECOM_WAITS_S = 5.0  # WeCom gives up on a callback after this long (and retries it)
LISTENING = re.compile(r"secantus listening on [0-9.]+:(\d+)")  # the line EmbeddedMongo waits for
MS = 1e6


# -- what is sent -----------------------------------------------------------------------------
class Callbacks:
    """An endless supply of distinct signed callbacks for one corp app, spread over ``accounts``."""

    def __init__(self, keys: CorpAppKeys, accounts: int = 100) -> None:
        self.keys = keys
        self.accounts = accounts
        self._next = 0
        self._epoch = int(time.time())

    def take(self, count: int) -> Iterator[tuple[str, bytes]]:
        """``(path?query, body)`` of the next ``count`` callbacks."""
        for seq in range(self._next, self._next + count):
            open_kfid = f"wkbench{seq % self.accounts:04d}"
            plaintext = kf_event_xml(self.keys.corp_id, open_kfid, f"ENCbench{seq:010d}", self._epoch + seq)
            query, body = signed_post(self.keys, plaintext)
            yield f"/callback/{self.keys.corp_id}?{query}", body
        self._next += count


# -- the process under test -------------------------------------------------------------------
@dataclass
class Target:
    name: str
    child: Child
    url: str
    stores: bool  # False for the bare app
    mongo_uri: str | None = None  # of its database, once known
    db_pid: int | None = None

    @property
    def pids(self) -> dict[str, int | None]:
        pids: dict[str, int | None] = {"server": self.child.pid}
        if self.stores:
            pids["database"] = self.db_pid
        pids["client"] = os.getpid()
        return pids


def wxkf_argv(command: str) -> list[str]:
    """``wxkf <command>`` as installed beside this interpreter (what a user types), else ``-m hub``."""
    script = Path(sys.executable).with_name("wxkf")
    return [str(script), command] if script.exists() else [sys.executable, "-m", "hub", command]


def embedded_uri(data_dir: Path) -> str:
    """The URI of the SecantusDB a wxkf process started on ``data_dir``, from the port in its log."""
    match = LISTENING.search((data_dir / LOG_FILE).read_text(errors="replace"))
    if match is None:
        raise RuntimeError(f"no port in {data_dir / LOG_FILE}")
    return f"mongodb://127.0.0.1:{match.group(1)}/?directConnection=true"


@asynccontextmanager
async def running(
    name: str, workdir: Path, admin_token: str, uri_options: str | None = None
) -> AsyncIterator[Target]:
    """Start ``name``. With ``uri_options``, the database is a SecantusDB started here (the same
    ``EmbeddedMongo`` class, same flags) and the service gets ``MONGO_URI`` with these options."""
    port = free_port()
    log = workdir / f"{name}.log"
    async with AsyncExitStack() as stack:
        if name == "bare":
            argv = [sys.executable, "-m", "bench.bare_app", "--port", str(port)]
            target = Target(name, Child(name, argv, log), f"http://127.0.0.1:{port}", stores=False)
        else:
            data_dir = workdir / f"{name}-data"
            env = {
                "WXKF_DATA_DIR": str(data_dir),
                "WXKF_ADMIN_TOKEN": admin_token,
                "HOST": "127.0.0.1",
                "PORT": str(port),
                # Nothing here may call WeCom; a closed local port makes sure nothing leaves the machine.
                "WECOM_API_BASE": "http://127.0.0.1:9/cgi-bin",
            }
            external = None
            if uri_options is not None:
                external = EmbeddedMongo(workdir / f"{name}-db")
                uri = await stack.enter_async_context(external) + "&" + uri_options
                env |= {"MONGO_URI": uri, "WXKF_SECRET_KEY": base64.b64encode(os.urandom(32)).decode()}
            child = Child(name, wxkf_argv("gateway" if name == "gateway" else "up"), log, env=env)
            target = Target(name, child, f"http://127.0.0.1:{port}", stores=True)
        target.child.start()
        stack.callback(target.child.stop)
        await target.child.wait_http(target.url + "/healthz")
        if target.stores:
            if external is None:
                target.mongo_uri = embedded_uri(data_dir)
                target.db_pid = next(iter(children(target.child.pid)), None)
            else:
                target.mongo_uri, target.db_pid = external.uri, external.pid
        yield target


async def register_app(
    http: aiohttp.ClientSession, target: Target, keys: CorpAppKeys, admin_token: str
) -> None:
    body = {"corp_id": keys.corp_id, "token": keys.token, "encoding_aes_key": keys.aes_key}
    headers = {"authorization": f"Bearer {admin_token}"}
    async with http.post(target.url + "/admin/apps", json=body, headers=headers) as response:
        if response.status != 201:
            raise RuntimeError(f"POST /admin/apps answered {response.status}: {await response.text()}")


class Store:
    """Counts in the target's database (a second client on the same server).

    ``gateway`` stores each callback in its inbox; ``up`` hands kf callbacks to the manager's durable
    intake instead, so its stored callbacks are counted in the manager's event log.
    """

    def __init__(self, target: Target) -> None:
        assert target.mongo_uri is not None
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(target.mongo_uri)
        self.db = self.client[DB_NAME]
        self.collection = MANAGER_EVENTS if target.name == "up" else INBOX

    async def stored(self) -> int:
        return await self.db[self.collection].count_documents({})

    async def counters(self) -> Counter[str]:
        """The server's ``opcounters`` (commands by kind, as MongoDB counts them) and requests."""
        status = await self.client.admin.command("serverStatus")
        counters: Counter[str] = Counter(status.get("opcounters", {}))
        counters["requests"] = status.get("network", {}).get("numRequests", 0)
        return counters

    async def close(self) -> None:
        await self.client.close()


# -- open loop --------------------------------------------------------------------------------
@dataclass(slots=True)
class Shot:
    target: str
    body: bytes
    planned_ns: int = 0
    sent_ns: int = 0
    done_ns: int = 0
    status: int = 0


async def open_loop(http: aiohttp.ClientSession, base_url: str, shots: list[Shot], rate: int) -> None:
    """Send shot ``i`` at ``start + i / rate`` (never waiting for answers); fills in the times."""
    headers = {"content-type": "text/xml"}

    async def send(shot: Shot) -> None:
        shot.sent_ns = time.monotonic_ns()
        try:
            async with http.post(base_url + shot.target, data=shot.body, headers=headers) as response:
                await response.read()
                shot.status = response.status
        except TimeoutError:
            shot.status = TIMEOUT
        except aiohttp.ClientError:
            shot.status = CONNECTION_ERROR
        shot.done_ns = time.monotonic_ns()

    start = time.monotonic_ns() + 20_000_000
    for i, shot in enumerate(shots):
        shot.planned_ns = start + i * 1_000_000_000 // rate
    tasks = []
    i = 0
    while i < len(shots):
        now = time.monotonic_ns()
        while i < len(shots) and shots[i].planned_ns <= now:
            tasks.append(asyncio.create_task(send(shots[i])))
            i += 1
        if i < len(shots):
            await asyncio.sleep(max(0, shots[i].planned_ns - time.monotonic_ns()) / 1e9)
    await asyncio.gather(*tasks)


def spread(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50), 2),
        "p90": round(percentile(values, 90), 2),
        "p99": round(percentile(values, 99), 2),
        "max": round(max(values), 2) if values else float("nan"),
    }


def open_loop_report(shots: list[Shot], measured_from: int, rate: int) -> dict[str, Any]:
    measured = shots[measured_from:]
    first_planned = measured[0].planned_ns
    acked = [shot for shot in measured if shot.status == 200]
    last_sent = max(shot.sent_ns for shot in measured)
    last_done = max(shot.done_ns for shot in measured)
    ack_ms = [(shot.done_ns - shot.planned_ns) / MS for shot in acked]
    return {
        "offered_per_s": rate,
        "callbacks": len(measured),
        "sent_per_s": round(len(measured) / ((last_sent - first_planned) / 1e9), 1),
        "acknowledged": len(acked),
        "acknowledged_per_s": round(len(acked) / ((last_done - first_planned) / 1e9), 1),
        "not_acknowledged": dict(Counter(str(shot.status) for shot in measured if shot.status != 200)),
        "ack_ms_from_planned_send": spread(ack_ms),
        "client_send_lag_ms": spread([(shot.sent_ns - shot.planned_ns) / MS for shot in measured]),
        f"acks_slower_than_{WECOM_WAITS_S:g}s": sum(1 for ms in ack_ms if ms > WECOM_WAITS_S * 1000),
        "slowest_seconds": slowest_seconds(((s.planned_ns, s.done_ns) for s in measured), first_planned),
    }


# -- one target -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    rates: list[int]
    duration: float
    warmup: float
    wrk_connections: list[int]
    wrk_duration: float
    wrk_budget_per_s: int  # callbacks generated per second of wrk run (must exceed the throughput)
    profile: frozenset[str]  # phases to run py-spy in: offered rates ("500") and/or "wrk"
    uri_options: str | None  # not None: our own SecantusDB, MONGO_URI with these options
    accounts: int


@dataclass(frozen=True)
class Mark:
    """Database state before a run."""

    stored: int
    counters: Counter[str]

    @classmethod
    async def take(cls, store: Store | None) -> Mark:
        if store is None:
            return cls(0, Counter())
        return cls(await store.stored(), await store.counters())


async def check_stored(
    store: Store | None, before: Mark, acknowledged: int, slack: int, target: Target, result: dict[str, Any]
) -> None:
    """Record how many callbacks were stored and the database commands per stored callback."""
    if store is None:
        return
    stored = await store.stored() - before.stored
    commands = await store.counters()
    commands.subtract(before.counters)
    result["db_commands_per_stored_callback"] = {
        kind: round(count / stored, 3) for kind, count in sorted(commands.items()) if count and stored
    }
    result[f"stored_in_{store.collection}"] = stored
    result["stored_matches_acknowledged"] = acknowledged <= stored <= acknowledged + slack


async def run_target(
    name: str, plan: Plan, workdir: Path, keys: CorpAppKeys, admin_token: str
) -> dict[str, Any]:
    report: dict[str, Any] = {"target": name, "open_loop": [], "wrk": []}
    callbacks = Callbacks(keys, plan.accounts)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        running(name, workdir, admin_token, plan.uri_options) as target,
        aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
    ):
        store = None
        if target.stores:
            await register_app(http, target, keys, admin_token)
            store = Store(target)
        try:
            for rate in plan.rates:
                count = int(rate * (plan.warmup + plan.duration))
                shots = [Shot(path, body) for path, body in callbacks.take(count)]
                before = await Mark.take(store)
                profiling = None
                if store is not None and str(rate) in plan.profile:
                    profiling = asyncio.create_task(
                        profile_target(target, workdir, f"{rate}", plan.warmup, plan.duration - 2)
                    )
                started = time.monotonic()
                with cpu_usage(target.pids) as cpu, profile.machine_cpu() as machine_busy:
                    await open_loop(http, target.url, shots, rate)
                    wall = time.monotonic() - started
                result = open_loop_report(shots, int(rate * plan.warmup), rate)
                result["cpu_percent_of_one_core"] = {
                    **{k: round(100 * v / wall, 1) for k, v in cpu.items()},
                    **machine_busy,
                }
                acked_total = sum(1 for shot in shots if shot.status == 200)
                await check_stored(store, before, acked_total, 0, target, result)
                if profiling is not None:
                    result["profile"] = await profiling
                report["open_loop"].append(result)
                print_report(f"{name}: {rate}/s open loop", result)
                await asyncio.sleep(2)
            for connections in plan.wrk_connections:
                requests_file = workdir / f"{name}-wrk-{connections}.txt"
                write_requests(requests_file, callbacks.take(int(plan.wrk_duration * plan.wrk_budget_per_s)))
                before = await Mark.take(store)
                profiling = None
                if store is not None and "wrk" in plan.profile:
                    profiling = asyncio.create_task(
                        profile_target(target, workdir, f"wrk{connections}", 2, plan.wrk_duration - 4)
                    )
                with cpu_usage(target.pids) as cpu, profile.machine_cpu() as machine_busy:
                    outcome = await run_wrk(
                        target.url,
                        duration=plan.wrk_duration,
                        connections=connections,
                        requests_file=requests_file,
                    )
                requests_file.unlink()
                result = {"connections": connections, **outcome.report()}
                result["cpu_percent_of_one_core"] = {
                    **{k: round(100 * v / outcome.duration_s, 1) for k, v in cpu.items()},
                    **machine_busy,
                }
                await check_stored(store, before, outcome.ok, connections, target, result)
                if profiling is not None:
                    result["profile"] = await profiling
                report["wrk"].append(result)
                print_report(f"{name}: wrk -c{connections}", result)
                await asyncio.sleep(2)
        finally:
            if store is not None:
                await store.close()
    return report


async def profile_target(
    target: Target, workdir: Path, label: str, delay: float, seconds: float
) -> dict[str, Any]:
    """py-spy on the server and its database for ``seconds``, starting ``delay`` seconds from now."""
    await asyncio.sleep(delay)
    seconds = max(1.0, seconds)
    pids = target.pids
    names = [name for name in ("server", "database") if pids.get(name)]
    profiles = await asyncio.gather(
        *(
            profile.record(pids[name] or 0, seconds, workdir / f"{target.name}-{label}-{name}.pyspy.txt")
            for name in names
        )
    )
    out: dict[str, Any] = {"seconds": seconds}
    for name, prof in zip(names, profiles, strict=True):
        out[name] = {"gil_samples": prof.samples, **prof.summary()} if prof else "py-spy unavailable"
    return out


# -- the whole run ----------------------------------------------------------------------------
def ceiling_comparison(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Each target's wrk throughput as a percentage of the bare app's at the same connection count."""
    bare = next((r for r in reports if r["target"] == "bare"), None)
    if bare is None:
        return {}
    ceiling = {run["connections"]: run["ok_per_s"] for run in bare["wrk"]}
    out: dict[str, Any] = {}
    for report in reports:
        if report["target"] == "bare":
            continue
        out[report["target"]] = {
            f"c{run['connections']}": f"{100 * run['ok_per_s'] / ceiling[run['connections']]:.1f}%"
            for run in report["wrk"]
            if ceiling.get(run["connections"])
        }
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="wxkf-bench-gateway-"))
    admin_token = "bench-" + secrets.token_hex(16)
    keys = CorpAppKeys.random("wwbench" + secrets.token_hex(5))
    plan = Plan(
        rates=args.rates,
        duration=args.duration,
        warmup=args.warmup,
        wrk_connections=args.wrk_connections,
        wrk_duration=args.wrk_duration,
        wrk_budget_per_s=args.wrk_budget,
        profile=frozenset(args.profile.split(",")) if args.profile else frozenset(),
        uri_options=args.uri_options,
        accounts=args.accounts,
    )
    plan_report = {**plan.__dict__, "profile": sorted(plan.profile)}
    report: dict[str, Any] = {"machine": machine(), "plan": plan_report, "workdir": str(workdir)}
    report["targets"] = []
    try:
        for name in args.targets:
            report["targets"].append(await run_target(name, plan, workdir, keys, admin_token))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report["percent_of_ceiling"] = ceiling_comparison(report["targets"])
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_load", description=__doc__)
    parser.add_argument("--targets", default=",".join(TARGETS), help="any of bare,gateway,up in order")
    parser.add_argument("--rates", default="200,500,1000", help="offered callbacks/s, comma-separated")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per rate")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each rate")
    parser.add_argument("--wrk-connections", default="64,256", help="wrk runs, one per connection count")
    parser.add_argument("--wrk-duration", type=float, default=30.0)
    parser.add_argument("--wrk-budget", type=int, default=5000, help="callbacks generated per wrk second")
    parser.add_argument("--accounts", type=int, default=100, help="kf accounts the callbacks are spread over")
    parser.add_argument(
        "--profile", default="", metavar="PHASES", help="py-spy during these phases, e.g. 500,wrk"
    )
    parser.add_argument(
        "--uri-options",
        default=None,
        metavar="OPTS",
        help="start SecantusDB here and give the service MONGO_URI=...&OPTS, e.g. retryWrites=false",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 s per rate, 5 s of wrk")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, data, profiles)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    args.targets = [name for name in args.targets.split(",") if name]
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    args.rates = [int(rate) for rate in args.rates.split(",") if rate]
    args.wrk_connections = [int(c) for c in args.wrk_connections.split(",") if c]
    if args.quick:
        args.duration, args.warmup, args.wrk_duration = 3.0, 1.0, 5.0
    report = asyncio.run(main_async(args))
    print_report("gateway load", report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
