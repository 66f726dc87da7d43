"""Token storm: many concurrent ``gettoken`` requests across token-service replicas (issue 3).

``python -m bench.token_storm [--rounds 5] [--requests 1000] [--clients 20] [--wrk-duration 30]``;
``--quick`` is a smoke run (2 rounds, 5 s of wrk). Needs ``wrk`` (``apt-get install wrk``).
``--source DIR`` runs the token services from another source tree (``git archive`` of an older commit),
to compare before and after side by side.

Setup, as an operator would run two replicas:

* ``wxkf sim`` is WeCom: it counts ``gettoken`` calls per app (``gettoken_calls`` in its control
  API); its gettoken rate limit is off so that every upstream call is counted, not refused.
* one SecantusDB for both replicas, started here with the class ``wxkf`` embeds (same flags);
* two ``wxkf token-service`` processes with that ``MONGO_URI``, one ``WXKF_SECRET_KEY`` and
  ``WECOM_API_BASE`` pointing at the simulator.

Each round creates a fresh app in the simulator (so no replica has a token for it, in memory or in
the database), then ``--clients`` aiohttp sessions, half on each replica, open their connections and
wait at a barrier; released together, they send ``--requests`` ``GET /cgi-bin/gettoken`` in all.
Goal: at most one upstream call per replica per round, and every answer the same token. (Nothing is
stored for a pair before WeCom has issued a token for it, so replicas cannot share the very first
call; WeCom answers the second with the same token. Renewals are shared: bench/token_lifetime.py.)

Then the cached path: wrk against one replica, and against both at once (one wrk each).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp

from bench import profile
from bench.gateway_load import spread, wxkf_argv
from bench.manager_support import Child, cpu_usage, free_ports, machine, print_report
from bench.wrk import run_wrk
from wxkf.database import EmbeddedMongo

CORP_ID = "wwtokenstorm"
MS = 1e6


@dataclass
class Stack:
    sim: Child
    sim_url: str
    replicas: list[Child]
    urls: list[str]
    db: EmbeddedMongo


@asynccontextmanager
async def stack(
    workdir: Path, *, replicas: int = 2, config: dict[str, Any] | None = None, source: Path | None = None
) -> AsyncIterator[Stack]:
    """Simulator (gettoken rate limit off, ``config`` on top) with the corp ``CORP_ID``, one database,
    ``replicas`` token services on it (run from ``source``, another checkout, if given); all stopped
    on exit."""
    sim_port, *ports = free_ports(1 + replicas)
    seed = workdir / "seed.json"
    sim_config = {"gettoken_rate": None, **(config or {})}
    seed.write_text(json.dumps({"config": sim_config, "corps": [{"corpid": CORP_ID}]}))
    sim = Child(
        "simulator",
        [*wxkf_argv("sim"), "--port", str(sim_port), "--seed", str(seed)],
        workdir / "simulator.log",
    )
    async with AsyncExitStack() as cleanup:
        db = EmbeddedMongo(workdir / "db")
        uri = await cleanup.enter_async_context(db)
        secret_key = base64.b64encode(os.urandom(32)).decode()
        services = [
            Child(
                f"token-service-{i}",
                wxkf_argv("token-service"),
                workdir / f"token-service-{i}.log",
                env={
                    "MONGO_URI": uri,
                    "WXKF_SECRET_KEY": secret_key,
                    "WECOM_API_BASE": f"http://127.0.0.1:{sim_port}/cgi-bin",
                    "WXKF_DATA_DIR": str(workdir / f"replica-{i}"),
                    "HOST": "127.0.0.1",
                    "PORT": str(port),
                    **({"PYTHONPATH": str(source)} if source is not None else {}),
                },
            )
            for i, port in enumerate(ports)
        ]
        for child in (sim, *services):
            child.start()
            cleanup.callback(child.stop)
        sim_url = f"http://127.0.0.1:{sim_port}"
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        await sim.wait_http(sim_url + "/sim/config")
        for child, url in zip(services, urls, strict=True):
            await child.wait_http(url + "/healthz")
        yield Stack(sim, sim_url, services, urls, db)


async def new_app(http: aiohttp.ClientSession, run: Stack) -> tuple[int, str]:
    """A fresh simulator app: ``(agentid, secret)``."""
    secret = "storm-" + secrets.token_hex(16)
    async with http.post(f"{run.sim_url}/sim/corps/{CORP_ID}/apps", json={"secret": secret}) as response:
        app = await response.json()
    return int(app["agentid"]), secret


async def gettoken_calls(http: aiohttp.ClientSession, run: Stack, agentid: int) -> int:
    async with http.get(f"{run.sim_url}/sim/corps/{CORP_ID}/apps/{agentid}") as response:
        return int((await response.json())["gettoken_calls"])


def gettoken_path(secret: str) -> str:
    return "/cgi-bin/gettoken?" + urlencode({"corpid": CORP_ID, "corpsecret": secret})


async def touch(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(url) as response:
        await response.read()


@dataclass(slots=True)
class Answer:
    errcode: int | None = None
    token: str | None = None
    latency_ms: float = 0.0


async def storm(run: Stack, secret: str, requests: int, clients: int) -> tuple[list[Answer], float]:
    """``requests`` gettoken calls from ``clients`` sessions (alternating replicas), released at once."""
    per_client = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]
    sessions = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=count), timeout=aiohttp.ClientTimeout(total=60)
        )
        for count in per_client
    ]
    release = asyncio.Event()
    answers: list[Answer] = []
    released_ns = 0

    async def one(http: aiohttp.ClientSession, url: str) -> None:
        answer = Answer()
        answers.append(answer)
        await release.wait()
        try:
            async with http.get(url) as response:
                data = await response.json()
            answer.errcode, answer.token = data.get("errcode"), data.get("access_token")
        except (aiohttp.ClientError, TimeoutError) as exc:
            answer.token = f"client error: {exc!r}"
        answer.latency_ms = (time.monotonic_ns() - released_ns) / MS

    try:
        # Open every connection first, so that the storm is requests on live connections, not connects.
        await asyncio.gather(
            *(
                touch(http, run.urls[i % 2] + "/healthz")
                for i, (http, count) in enumerate(zip(sessions, per_client, strict=True))
                for _ in range(count)
            )
        )
        tasks = [
            asyncio.create_task(one(http, run.urls[i % 2] + gettoken_path(secret)))
            for i, (http, count) in enumerate(zip(sessions, per_client, strict=True))
            for _ in range(count)
        ]
        await asyncio.sleep(0.2)  # every task is parked on the barrier
        released_ns = time.monotonic_ns()
        release.set()
        await asyncio.gather(*tasks)
        wall = (time.monotonic_ns() - released_ns) / 1e9
    finally:
        await asyncio.gather(*(http.close() for http in sessions))
    return answers, wall


async def storm_round(http: aiohttp.ClientSession, run: Stack, requests: int, clients: int) -> dict[str, Any]:
    agentid, secret = await new_app(http, run)
    before = await gettoken_calls(http, run, agentid)
    answers, wall = await storm(run, secret, requests, clients)
    upstream = await gettoken_calls(http, run, agentid) - before
    tokens = Counter(answer.token for answer in answers)
    return {
        "requests": len(answers),
        "upstream_gettoken_calls": upstream,
        "answers_with_errcode_0": sum(1 for answer in answers if answer.errcode == 0),
        "distinct_tokens": len(tokens),
        "all_same_token": len(tokens) == 1 and next(iter(tokens)) is not None,
        "seconds_release_to_last_answer": round(wall, 3),
        "latency_ms_from_release": spread([answer.latency_ms for answer in answers]),
    }


async def cached_throughput(
    http: aiohttp.ClientSession, run: Stack, duration: float, connections: int
) -> dict[str, Any]:
    """wrk on gettoken for an app whose token is cached: one replica, then both at once."""
    agentid, secret = await new_app(http, run)
    for url in run.urls:  # warm both replicas' memory
        async with http.get(url + gettoken_path(secret)) as response:
            await response.read()
    path = gettoken_path(secret)
    pids: dict[str, int | None] = {f"replica_{i}": child.pid for i, child in enumerate(run.replicas)}
    pids["database"] = run.db.pid
    out: dict[str, Any] = {}
    for label, urls in (("one_replica", run.urls[:1]), ("both_replicas", run.urls)):
        with cpu_usage(pids) as cpu, profile.machine_cpu() as machine_busy:
            results = await asyncio.gather(
                *(run_wrk(url + path, duration=duration, connections=connections) for url in urls)
            )
        out[label] = {
            "requests_per_s": round(sum(result.rate for result in results), 1),
            "per_replica": [result.report() for result in results],
            "cpu_percent_of_one_core": {
                **{k: round(100 * v / results[0].duration_s, 1) for k, v in cpu.items()},
                **machine_busy,
            },
        }
        await asyncio.sleep(2)
    out["upstream_gettoken_calls"] = await gettoken_calls(http, run, agentid)
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="wxkf-bench-tokens-"))
    report: dict[str, Any] = {"machine": machine(), "workdir": str(workdir), "rounds": []}
    report["settings"] = {
        "requests": args.requests,
        "clients": args.clients,
        "replicas": 2,
        "wrk_connections": args.wrk_connections,
        "wrk_duration_s": args.wrk_duration,
        "token_service_source": str(args.source or "this checkout"),
    }
    try:
        async with stack(workdir, source=args.source) as run, aiohttp.ClientSession() as http:
            for _ in range(args.rounds):
                result = await storm_round(http, run, args.requests, args.clients)
                report["rounds"].append(result)
                print_report("storm round", result)
            report["cached"] = await cached_throughput(http, run, args.wrk_duration, args.wrk_connections)
            print_report("cached gettoken", report["cached"])
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.token_storm", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="storms, each for a fresh app")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=20, help="aiohttp sessions, alternating replicas")
    parser.add_argument("--wrk-duration", type=float, default=30.0)
    parser.add_argument("--wrk-connections", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, 5 s of wrk")
    parser.add_argument(
        "--source", type=Path, default=None, help="run the token services from this tree (before/after)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, database)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.wrk_duration = 2, 5.0
    report = asyncio.run(main_async(args))
    print_report("token storm", report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    failed = [
        r
        for r in report["rounds"]
        if not 1 <= r["upstream_gettoken_calls"] <= report["settings"]["replicas"] or not r["all_same_token"]
    ]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
