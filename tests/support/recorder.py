"""A receiver that records what reaches it: stands in for a manager, a subscriber or a puppet.

``status`` simulates an outage (non-200 answers), ``gate`` holds requests to create concurrency,
and the ``wait_*`` methods let a test wait on what arrived instead of sleeping.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route


@dataclass
class Recorder:
    status: int = 200
    received: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    gate: asyncio.Event | None = None
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight: int = 0  # per kf account: two deliveries for one account at once would break order
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        account = json.loads(body).get("openKfId", "") if request.url.path.endswith("/decrypted") else "other"
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
            return PlainTextResponse("roger")
        finally:
            self.in_flight[account] -= 1

    def tokens(self) -> list[str]:
        """The ``token`` of every acknowledged ``{token, openKfId}`` delivery, in arrival order."""
        return [json.loads(r["body"])["token"] for r in self.received if r["path"].endswith("/decrypted")]

    async def wait(self, predicate: Callable[[], object], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until ``count`` requests were acknowledged."""
        await self.wait(lambda: len(self.received) >= count, timeout)
        return self.received

    async def wait_for_attempts(self, count: int, timeout: float = 10.0) -> None:
        """Wait until ``count`` requests arrived, acknowledged or not."""
        await self.wait(lambda: self.attempts >= count, timeout)

    def app(self) -> Starlette:
        async def probe(request: Request) -> Response:  # what a puppet answers a bare GET /callback
            return PlainTextResponse("bad request", status_code=400)

        return Starlette(
            routes=[
                Route("/{path:path}", probe, methods=["GET"]),
                Route("/{path:path}", self.handle, methods=["POST"]),
            ]
        )
