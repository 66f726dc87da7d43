"""A real gateway on the test database and a real socket, with a recording stand-in for the manager."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway.app import gateway_app
from gateway.manager_link import HttpManagerSink
from gateway.service import Gateway, GatewayConfig
from tests.support.servers import serve_app
from tests.support.wecom_callbacks import CorpAppKeys
from wxkf.retry import RetrySchedule
from wxkf.runtime import Runtime, open_runtime
from wxkf.settings import Settings

ADMIN = "test-admin-token"
FAST_RETRIES = RetrySchedule((0.05, 0.1, 0.2, 0.4), jitter=0.0)


@dataclass
class Listener:
    """Records what reaches it; answers ``status`` (change it to simulate an outage)."""

    status: int = 200
    received: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        async with self.arrived:
            self.attempts += 1
            self.arrived.notify_all()
            if self.status != 200:
                return PlainTextResponse("down", status_code=self.status)
            self.received.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
            self.arrived.notify_all()
        return PlainTextResponse("roger")

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until ``count`` deliveries were acknowledged."""
        async with asyncio.timeout(timeout), self.arrived:
            await self.arrived.wait_for(lambda: len(self.received) >= count)
        return self.received

    async def wait_for_attempts(self, count: int, timeout: float = 10.0) -> None:
        """Wait until ``count`` requests arrived, acknowledged or not."""
        async with asyncio.timeout(timeout), self.arrived:
            await self.arrived.wait_for(lambda: self.attempts >= count)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.handle, methods=["POST"])])


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with open_runtime(settings) as opened:
        yield opened


@pytest.fixture
async def listener() -> AsyncIterator[tuple[Listener, str]]:
    recorder = Listener()
    async with serve_app(recorder.app()) as url:
        yield recorder, url


@pytest.fixture
def keys() -> CorpAppKeys:
    return CorpAppKeys.random()


def make_gateway(
    runtime: Runtime, manager_url: str | None, replica: str = "gw-test", **config: Any
) -> Gateway:
    sink = HttpManagerSink(runtime.http, manager_url) if manager_url else None
    cfg = GatewayConfig(replica_id=replica, schedule=FAST_RETRIES, **config)
    return Gateway(runtime.db, runtime.box, runtime.http, cfg, manager_sink=sink)


@dataclass
class RunningGateway:
    gateway: Gateway
    url: str
    http: httpx.AsyncClient
    listener: Listener
    keys: CorpAppKeys


@pytest.fixture
async def gw(
    runtime: Runtime, listener: tuple[Listener, str], keys: CorpAppKeys
) -> AsyncIterator[RunningGateway]:
    """A started gateway serving one registered corp app, forwarding kf events to the listener."""
    recorder, manager_url = listener
    gateway = make_gateway(runtime, manager_url)
    await gateway.start()
    await gateway.registry.add(keys.corp_id, None, keys.token, keys.aes_key, "corp-secret-123")
    try:
        async with serve_app(gateway_app(gateway, ADMIN)) as url, httpx.AsyncClient(base_url=url) as http:
            yield RunningGateway(gateway, url, http, recorder, keys)
    finally:
        await gateway.stop()
