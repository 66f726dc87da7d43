"""A puppet that is stopping answers ``503 stopping`` until it deregisters: the manager reads that as the
puppet going away, not as a failed delivery. The account waits (offline, its mailbox kept) without a
failed attempt, a backoff or a dead letter, the probe does not bring it back while it still stops,
and it flows when the puppet (or its successor) registers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from manager.mailbox import account_key
from tests.manager.conftest import add_puppet, make_manager
from tests.support.servers import serve_app
from wxkf.runtime import Runtime

CORP = "wwstopping0000001"
KEY = account_key(CORP, "wkA")


@dataclass
class StoppingPuppet:
    """Answers as ``wxkf puppet`` does while it stops (503 ``stopping``, to deliveries and to the probe's
    GET) until ``stopping`` is cleared; then as a live puppet."""

    stopping: bool = True
    posts: list[bool] = field(default_factory=list)  # per delivery: was it refused as stopping?
    probes: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def _count(self, delivery: bool) -> Response:
        async with self.changed:
            if delivery:
                self.posts.append(self.stopping)
            else:
                self.probes += 1
            self.changed.notify_all()
        if self.stopping:
            return PlainTextResponse("stopping", status_code=503)
        if delivery:
            return PlainTextResponse("roger")
        return PlainTextResponse("missing_parameter", status_code=400)

    async def post(self, request: Request) -> Response:
        await request.body()
        return await self._count(True)

    async def get(self, request: Request) -> Response:
        return await self._count(False)

    async def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/{path:path}", self.get, methods=["GET"]),
                Route("/{path:path}", self.post, methods=["POST"]),
            ]
        )


@pytest.fixture
async def stopping_puppet() -> AsyncIterator[tuple[StoppingPuppet, str]]:
    puppet = StoppingPuppet()
    async with serve_app(puppet.app()) as url:
        yield puppet, url


async def test_a_stopping_puppet_parks_its_account_without_a_failed_attempt_and_it_flows_on_registration(
    runtime: Runtime, stopping_puppet: tuple[StoppingPuppet, str]
) -> None:
    puppet, url = stopping_puppet
    manager = make_manager(runtime)  # 3 retries 0.05 s apart: a failure would be dead soon
    await manager.start()
    try:
        await add_puppet(manager, CORP, "wkA", url)
        await manager.accept_decrypted(CORP, "wkA", "tok-1", "event-1")
        await manager.dispatcher.wait_until(lambda o: o["offline"] + o["failed"] + o["dead"] >= 1, 10)
        outcomes = manager.dispatcher.outcomes
        assert outcomes["offline"] == 1 and not outcomes["failed"] and not outcomes["dead"], outcomes
        mailbox = await manager.mailboxes.get(KEY)
        assert mailbox is not None and mailbox.has_work and mailbox.attempts == 0
        assert mailbox.due_at is None  # waiting for its puppet, not due at a retry time
        # the probe asks twice while the puppet still stops: it is not brought back for another refusal
        await puppet.wait(lambda: puppet.probes >= 2)
        assert puppet.posts == [True], puppet.posts
        puppet.stopping = False  # its successor, on the same endpoint
        await add_puppet(manager, CORP, "wkA", url)  # registers: the account flows
        await puppet.wait(lambda: puppet.posts[-1:] == [False])
        await manager.dispatcher.wait_until(lambda o: o["delivered"] >= 1, 10)
        assert not manager.dispatcher.outcomes["dead"]
        assert not [event for event in await manager.mailboxes.events(KEY) if event.get("dead")]
    finally:
        await manager.stop()
