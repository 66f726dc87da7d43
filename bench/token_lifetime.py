"""Token lifetimes across replicas (issue 10, item 15): upstream ``gettoken`` calls per token lifetime.

``python -m bench.token_lifetime [--replicas 3] [--ttl 8] [--lifetimes 6] [--invalidations 2]``
``[--clients 4] [--source DIR]``; about ``(lifetimes + invalidations) x (ttl + 2)`` seconds (80 s
with the defaults). ``--source`` runs the token services from another source tree (``git archive`` of
an older commit) for a before/after comparison.

Setup, as an operator would run replicas:

* ``wxkf sim`` is WeCom with ``token_ttl=--ttl`` and ``token_reuse`` on (gettoken returns the current
  token until it expires, as WeCom does), its gettoken rate limit off; it counts every gettoken call
  by outcome (``GET /sim/tokens``: ``issued`` a new token, ``reused`` got back one still valid);
* one SecantusDB, and ``--replicas`` ``wxkf token-service`` processes on it with one secret key.

``--clients`` loops per replica (:class:`TokenLoad`) ask their replica for the token, call
``kf/account/list`` at the simulator with it, and on 40014/42001 report it to ``/token/invalidate``,
as :class:`wecom.WeComClient` does. After the first token the run lasts ``--lifetimes`` renewals,
revoking the current token ``--invalidations`` times on the way (``/sim/tokens/invalidate``: a forced
invalidation). Goal: ``upstream calls = 1 + lifetimes + invalidations`` and ``reused = 0``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp

from bench.gateway_load import spread
from bench.manager_support import machine, print_report
from bench.token_storm import CORP_ID, new_app, stack

TOKEN_REJECTED = frozenset({40001, 40014, 42001})


@dataclass
class TokenLoad:
    """Clients that get, use and report tokens like a puppet, counting what they see."""

    http: aiohttp.ClientSession
    sim_url: str
    replica_urls: list[str]
    corpid: str
    secret: str
    clients_per_replica: int = 4
    pace: float = 0.02  # seconds between one client's rounds: ~50 gettoken/s per client
    tokens: list[str] = field(default_factory=list)  # distinct tokens, in the order first served
    gettoken_errors: Counter[int] = field(default_factory=Counter)
    rejected: Counter[int] = field(default_factory=Counter)  # kf calls refused for their token
    invalidations: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def run(self, stop: asyncio.Event) -> None:
        clients = [url for url in self.replica_urls for _ in range(self.clients_per_replica)]
        await asyncio.gather(*(self._client(url, stop) for url in clients))

    async def wait_until(self, condition: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(condition)

    async def _client(self, url: str, stop: asyncio.Event) -> None:
        creds = {"corpid": self.corpid, "corpsecret": self.secret}
        while not stop.is_set():
            started = time.monotonic()
            async with self.http.get(url + "/cgi-bin/gettoken", params=creds) as response:
                answer = await response.json()
            self.latencies_ms.append((time.monotonic() - started) * 1000)
            token = answer.get("access_token")
            if answer.get("errcode") != 0 or not token:
                self.gettoken_errors[int(answer.get("errcode", -2))] += 1
            else:
                if token not in self.tokens:
                    self.tokens.append(token)
                await self._use(url, token)
            async with self._changed:
                self._changed.notify_all()
            await asyncio.sleep(self.pace)  # load shape, not synchronisation

    async def _use(self, url: str, token: str) -> None:
        api = f"{self.sim_url}/cgi-bin/kf/account/list"
        async with self.http.post(api, params={"access_token": token}, json={"limit": 1}) as response:
            errcode = int((await response.json()).get("errcode", -2))
        if errcode in TOKEN_REJECTED:
            self.rejected[errcode] += 1
            body = {"corpid": self.corpid, "corpsecret": self.secret, "access_token": token}
            async with self.http.post(url + "/token/invalidate", json=body) as response:
                await response.read()
            self.invalidations += 1


async def touch(http: aiohttp.ClientSession, url: str, params: dict[str, str]) -> None:
    async with http.get(url, params=params) as response:
        await response.read()


async def gettoken_counts(http: aiohttp.ClientSession, sim_url: str) -> dict[str, int]:
    async with http.get(f"{sim_url}/sim/tokens") as response:
        return dict(await response.json())


async def revoke(http: aiohttp.ClientSession, sim_url: str, corpid: str) -> None:
    async with http.post(f"{sim_url}/sim/tokens/invalidate", json={"corpid": corpid}) as response:
        response.raise_for_status()


def more_tokens_than(load: TokenLoad, count: int) -> bool:
    return len(load.tokens) > count


def plan(lifetimes: int, invalidations: int) -> list[str]:
    """``lifetimes`` renewals with ``invalidations`` forced ones spread between them."""
    at = [round((i + 1) * lifetimes / (invalidations + 1)) for i in range(invalidations)]
    steps: list[str] = []
    for renewal in range(lifetimes):
        steps += ["invalidation"] * at.count(renewal) + ["renewal"]
    return steps + ["invalidation"] * at.count(lifetimes)


async def measure_lifetimes(
    load: TokenLoad, lifetimes: int, invalidations: int, ttl: float
) -> dict[str, Any]:
    """Run ``load`` from its first token through ``lifetimes`` renewals and ``invalidations`` forced
    ones (spread over the run); the simulator's gettoken counts over the run, and what clients saw."""
    before = await gettoken_counts(load.http, load.sim_url)
    stop = asyncio.Event()
    clients = asyncio.create_task(load.run(stop))
    started = time.monotonic()
    try:
        await load.wait_until(lambda: len(load.tokens) >= 1, timeout=30)
        for step, action in enumerate(plan(lifetimes, invalidations), start=1):
            if action == "invalidation":
                await revoke(load.http, load.sim_url, load.corpid)
            # each step ends one token's life: wait for the next (a lifetime, generously)
            await load.wait_until(partial(more_tokens_than, load, step), timeout=3 * ttl + 30)
    finally:
        stop.set()
        await clients
    after = await gettoken_counts(load.http, load.sim_url)
    counts = {key: after[key] - before.get(key, 0) for key in after}
    return {
        "seconds": round(time.monotonic() - started, 1),
        "tokens_seen": len(load.tokens),
        "renewals": lifetimes,
        "forced_invalidations": invalidations,
        "upstream_gettoken": counts,
        "upstream_calls_per_renewal": round((counts["requests"] - invalidations) / max(1, lifetimes), 3),
        "client_gettoken_answers": len(load.latencies_ms),
        "client_gettoken_errors": dict(load.gettoken_errors),
        "client_calls_rejected_for_the_token": dict(load.rejected),
        "client_invalidation_reports": load.invalidations,
        "client_gettoken_latency_ms": spread(load.latencies_ms),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="wxkf-bench-lifetime-"))
    report: dict[str, Any] = {"machine": machine(), "workdir": str(workdir)}
    report["settings"] = {
        "replicas": args.replicas,
        "token_ttl_s": args.ttl,
        "lifetimes": args.lifetimes,
        "invalidations": args.invalidations,
        "clients_per_replica": args.clients,
        "token_service_source": str(args.source or "this checkout"),
    }
    config = {"token_ttl": args.ttl, "token_reuse": True}
    try:
        running = stack(workdir, replicas=args.replicas, config=config, source=args.source)
        async with running as run, aiohttp.ClientSession() as http:
            _, secret = await new_app(http, run)
            # the first token, asked of every replica at once: nothing is stored before WeCom answers,
            # so each replica may make one call for a pair it has never seen
            creds = {"corpid": CORP_ID, "corpsecret": secret}
            await asyncio.gather(*(touch(http, url + "/cgi-bin/gettoken", creds) for url in run.urls))
            report["first_token"] = await gettoken_counts(http, run.sim_url)
            load = TokenLoad(http, run.sim_url, run.urls, CORP_ID, secret, args.clients)
            report["lifetimes"] = await measure_lifetimes(load, args.lifetimes, args.invalidations, args.ttl)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.token_lifetime", description=__doc__)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--ttl", type=int, default=8, help="the simulator's token_ttl, seconds")
    parser.add_argument("--lifetimes", type=int, default=6, help="renewals to watch")
    parser.add_argument("--invalidations", type=int, default=2, help="forced invalidations on the way")
    parser.add_argument("--clients", type=int, default=4, help="client loops per replica")
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="run the token services from this source tree (before/after)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, database)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    print_report("token lifetimes", report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    counts = report["lifetimes"]["upstream_gettoken"]
    expected = report["lifetimes"]["renewals"] + args.invalidations
    sys.exit(0 if counts["reused"] == 0 and counts["requests"] == expected else 1)


if __name__ == "__main__":
    main()
