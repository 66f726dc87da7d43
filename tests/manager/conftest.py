"""A manager on the test database, and recording puppets on real sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway.registry import AppRegistry
from manager.dispatcher import DispatchConfig
from manager.service import Manager, ManagerConfig
from tests.support.servers import serve_app
from token_service.service import TokenService
from token_service.store import TokenStore
from wecom.tokens import AccessToken
from wxkf import webhooks
from wxkf.retry import RetrySchedule
from wxkf.runtime import Runtime, open_runtime
from wxkf.settings import Settings

FAST = RetrySchedule((0.05, 0.05, 0.05), jitter=0.0)
PUPPET_SECRET = webhooks.generate_secret()


@dataclass
class RecordingPuppet:
    """Records deliveries; ``status`` simulates failures; ``gate`` holds deliveries to test concurrency."""

    status: int = 200
    received: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight: int = 0  # per account: two deliveries for one account at once would break order
    gate: asyncio.Event | None = None
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        account = json.loads(body).get("openKfId", "") if request.url.path.endswith("/decrypted") else "raw"
        self.in_flight[account] = self.in_flight.get(account, 0) + 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight[account])
        try:
            if self.gate is not None:
                await self.gate.wait()
            async with self.changed:
                self.attempts += 1
                self.changed.notify_all()
                if self.status != 200:
                    return PlainTextResponse("failing", status_code=self.status)
                self.received.append(
                    {"path": request.url.path, "headers": dict(request.headers), "body": body}
                )
                self.changed.notify_all()
            return PlainTextResponse("roger")
        finally:
            self.in_flight[account] -= 1

    def tokens(self) -> list[str]:
        return [json.loads(r["body"])["token"] for r in self.received if r["path"].endswith("/decrypted")]

    async def wait(self, predicate: Any, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)

    def app(self) -> Starlette:
        async def probe(request: Request) -> Response:
            return PlainTextResponse("bad request", status_code=400)

        return Starlette(
            routes=[
                Route("/callback", probe, methods=["GET"]),
                Route("/callback", self.handle, methods=["POST"]),
                Route("/callback/decrypted", self.handle, methods=["POST"]),
            ]
        )


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with open_runtime(settings) as opened:
        yield opened


@pytest.fixture
async def puppet_server() -> AsyncIterator[tuple[RecordingPuppet, str]]:
    puppet = RecordingPuppet()
    async with serve_app(puppet.app()) as url:
        yield puppet, url


async def _no_upstream(corp_id: str, secret: str) -> AccessToken:
    raise AssertionError("these tests never call WeCom")


def make_manager(runtime: Runtime, owner: str = "mgr-1", **dispatch: Any) -> Manager:
    tokens = TokenService(TokenStore(runtime.db, runtime.box), _no_upstream)
    apps = AppRegistry(runtime.db, runtime.box)
    settings = dict(sweep_interval=0.05, probe_interval=0.05, lease_ttl=3.0, idle_release=0.5) | dispatch
    config = ManagerConfig(owner=owner, dispatch=DispatchConfig(owner=owner, schedule=FAST, **settings))
    return Manager(runtime.db, runtime.box, runtime.http, tokens, apps, "http://127.0.0.1:9/cgi-bin", config)


async def add_puppet(manager: Manager, corp_id: str, kf_id: str, endpoint: str) -> None:
    """Register directly (the proof against WeCom is tested with the simulator elsewhere)."""
    await manager.puppets.register(
        f"{corp_id}/{kf_id}",
        corp_id=corp_id,
        open_kfid=kf_id,
        kf_name=kf_id,
        endpoint=endpoint,
        app=None,
        corp_secret="corp-secret",
        webhook_secret=PUPPET_SECRET,
    )
    await manager.dispatcher.back_online(f"{corp_id}/{kf_id}")
