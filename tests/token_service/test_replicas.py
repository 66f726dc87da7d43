"""Token service replicas as OS processes against the simulator with short tokens (issue 10, item 15).

WeCom, and the simulator with ``token_reuse``, answer gettoken with the current token until it
expires, so every call before that is wasted: the simulator counts those as ``reused``. Three
``python -m hub token-service`` processes on one database, under clients that get, use and report
tokens, must make exactly one upstream call per token lifetime plus one per forced invalidation.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest

from bench.token_lifetime import TokenLoad, gettoken_counts, measure_lifetimes
from simulator import SimConfig, create_app
from simulator.clock import OffsetClock
from simulator.state import SimState
from tests.support.servers import serve_app
from tests.support.services import ServiceProcess, free_port, service_env
from wxkf.settings import Settings

TTL = 3  # seconds: short enough to watch several lifetimes, long enough for a loaded machine
REPLICAS = 3


@pytest.fixture
async def replicas(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[str, list[str], str, str]]:
    """``(sim_url, replica_urls, corpid, secret)``: the simulator in this process, replicas not."""
    state = SimState(clock=OffsetClock(), config=SimConfig(token_ttl=TTL, gettoken_rate=None))
    corpid, secret = "ww" + secrets.token_hex(8), secrets.token_hex(16)
    state.load({"corps": [{"corpid": corpid, "apps": [{"secret": secret}]}]})
    async with AsyncExitStack() as stack:
        sim_url = await stack.enter_async_context(serve_app(create_app(state), lifespan="on"))
        processes = [
            ServiceProcess(
                "token-service",
                service_env(settings, tmp_path / f"replica-{i}", wecom_api_base=f"{sim_url}/cgi-bin"),
                tmp_path / f"replica-{i}.log",
                free_port(),
            )
            for i in range(REPLICAS)
        ]
        for process in processes:
            stack.callback(process.stop)
            await process.start(timeout=60)
        yield sim_url, [process.url for process in processes], corpid, secret


async def test_replicas_call_gettoken_once_per_token_lifetime_and_once_per_invalidation(replicas) -> None:
    sim_url, urls, corpid, secret = replicas
    async with aiohttp.ClientSession() as http:
        # the first token, through one replica: the pair is proven and stored once
        creds = {"corpid": corpid, "corpsecret": secret}
        async with http.get(f"{urls[0]}/cgi-bin/gettoken", params=creds) as response:
            assert (await response.json())["errcode"] == 0
        assert await gettoken_counts(http, sim_url) == {"requests": 1, "refused": 0, "issued": 1, "reused": 0}

        load = TokenLoad(http, sim_url, urls, corpid, secret, clients_per_replica=3)
        result = await measure_lifetimes(load, lifetimes=2, invalidations=1, ttl=TTL)

    counts = result["upstream_gettoken"]
    assert counts["reused"] == 0, f"gettoken asked before the token expired: {result}"
    assert counts["refused"] == 0
    assert counts["requests"] == counts["issued"] == 2 + 1, result  # 2 renewals, 1 forced invalidation
    assert result["client_gettoken_errors"] == {}, result  # callers at expiry waited, none was refused
