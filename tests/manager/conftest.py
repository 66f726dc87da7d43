"""A manager on the test database, and recording puppets on real sockets."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from starlette.applications import Starlette

from gateway.registry import AppRegistry
from manager.dispatcher import DispatchConfig
from manager.service import Manager, ManagerConfig
from manager.socket_routes import PATH, socket_routes
from manager.sockets import SOCKET_ENDPOINT, PuppetSockets
from tests.support.recorder import Recorder
from tests.support.servers import serve_app
from token_service.service import TokenService
from token_service.store import TokenStore
from wecom.tokens import AccessToken
from wxkf import webhooks
from wxkf.retry import RetrySchedule
from wxkf.runtime import Runtime

FAST = RetrySchedule((0.05, 0.05, 0.05), jitter=0.0)
PUPPET_SECRET = webhooks.generate_secret()


@pytest.fixture
async def puppet_server() -> AsyncIterator[tuple[Recorder, str]]:
    puppet = Recorder()
    async with serve_app(puppet.app()) as url:
        yield puppet, url


async def _no_upstream(corp_id: str, secret: str) -> AccessToken:
    raise AssertionError("these tests never call WeCom")


def make_manager(
    runtime: Runtime,
    owner: str = "mgr-1",
    *,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    **dispatch: Any,
) -> Manager:
    tokens = TokenService(TokenStore(runtime.db, runtime.box), _no_upstream)
    apps = AppRegistry(runtime.db, runtime.box)
    settings = dict(sweep_interval=0.05, probe_interval=0.05, idle_release=0.5, housekeeping_interval=0.5)
    settings |= dispatch
    config = ManagerConfig(owner=owner, dispatch=DispatchConfig(owner=owner, schedule=FAST, **settings))
    return Manager(
        runtime.db,
        runtime.box,
        runtime.http,
        tokens,
        apps,
        "http://127.0.0.1:9/cgi-bin",
        config,
        clock=clock,
        monotonic=monotonic,
    )


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


@asynccontextmanager
async def running(*managers: Manager) -> AsyncIterator[None]:
    """Start ``managers``; stop them (final checkpoint, leases released) however the block ends."""
    for manager in managers:
        await manager.start()
    try:
        yield
    finally:
        for manager in managers:
            await manager.stop()


@asynccontextmanager
async def serving_sockets(
    runtime: Runtime, sockets: PuppetSockets | None = None
) -> AsyncIterator[tuple[Manager, str]]:
    """A started manager (its socket registry ``sockets`` if given) with socket puppets registered for
    ``wwcorp/wk1`` and ``wwcorp/wk2``, and only its socket route served; yields it and the route's
    ``ws://`` URL."""
    manager = make_manager(runtime)
    if sockets is not None:
        manager.sockets = sockets
    await manager.start()
    for kf in ("wk1", "wk2"):
        await add_puppet(manager, "wwcorp", kf, SOCKET_ENDPOINT)
    try:
        async with serve_app(Starlette(routes=socket_routes(manager))) as url:
            yield manager, "ws://" + url.removeprefix("http://") + PATH
    finally:
        await manager.stop()
