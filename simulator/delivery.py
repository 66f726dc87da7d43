"""Sending callbacks the way a platform does: in the background, with a timeout, retried, recorded.

Platform modules build an :class:`Outgoing` request (already signed and encrypted); the
:class:`Courier` sends it from a background task so the control request that caused it returns at
once, waits ``callback_timeout`` for an answer, retries after each ``callback_retry_delays`` entry on
a timeout, a connection error or any status but 200, and records every attempt (status, latency,
error) for ``/sim/deliveries``. The courier's tasks belong to the app's lifespan and are cancelled
on shutdown.

Requests go through one aiohttp session (no redirects followed, no proxy from the environment, no
limit on connections: a platform does not queue callbacks behind each other). Not httpx: its pool
costs time in proportion to the requests waiting for a connection, so under load the simulator, not
the server under test, became the limit.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from simulator.clock import Clock
from simulator.config import SimConfig

log = logging.getLogger(__name__)

Outcome = Literal["pending", "delivered", "failed", "cancelled"]
BODY_PREVIEW = 256


@dataclass(frozen=True)
class Outgoing:
    """One HTTP request a platform sends to a developer's server."""

    method: str
    url: str
    params: dict[str, str]
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # shown by the control API: corpid, kind...


@dataclass(frozen=True)
class Attempt:
    number: int
    at: float  # simulated time
    latency_ms: float
    status: int | None
    error: str | None
    raw: bytes = field(default=b"", repr=False)  # the start of the response body

    @property
    def body(self) -> str:
        return self.raw.decode("utf-8", "replace")

    def describe(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "at": self.at,
            "latency_ms": round(self.latency_ms, 3),
            "status": self.status,
            "error": self.error,
            "body": self.body,
        }


@dataclass(eq=False)
class Delivery:
    id: str
    request: Outgoing
    created_at: float
    attempts: list[Attempt] = field(default_factory=list)
    outcome: Outcome = "pending"
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.request.url,
            "method": self.request.method,
            **self.request.meta,
            "created_at": self.created_at,
            "outcome": self.outcome,
            "attempts": [attempt.describe() for attempt in self.attempts],
        }


class Courier:
    """Owns the HTTP client and the delivery tasks; use as ``async with courier:`` in a lifespan."""

    def __init__(self, config: SimConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.deliveries: OrderedDict[str, Delivery] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: aiohttp.ClientSession | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Courier:
        # trust_env=False: a developer's HTTP(S)_PROXY must not capture callbacks to localhost.
        self._client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            trust_env=False,
            auto_decompress=False,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def client(self) -> aiohttp.ClientSession:
        if self._client is None:
            raise RuntimeError("the courier is not running (use it inside the app's lifespan)")
        return self._client

    # -- one request ------------------------------------------------------------------------
    async def attempt(self, request: Outgoing, number: int = 1) -> Attempt:
        """Send ``request`` once, waiting at most ``callback_timeout`` for the whole answer."""
        at = self.clock()
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        raw = b""
        try:
            async with (
                asyncio.timeout(self.config.callback_timeout),
                self.client.request(
                    request.method,
                    request.url,
                    params=request.params,
                    data=request.body,
                    headers=request.headers,
                    allow_redirects=False,
                ) as response,
            ):
                status = response.status
                raw = (await response.read())[:BODY_PREVIEW]
        except TimeoutError:
            error = f"no answer within {self.config.callback_timeout} s"
        except (aiohttp.ClientError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        latency = (time.perf_counter() - started) * 1000
        return Attempt(number, at, latency, status, error, raw)

    # -- background deliveries --------------------------------------------------------------
    def submit(self, request: Outgoing) -> Delivery:
        """Start delivering ``request`` in the background and return its record at once."""
        delivery = Delivery(f"d{next(self._ids)}", request, self.clock())
        self.deliveries[delivery.id] = delivery
        while len(self.deliveries) > self.config.delivery_history:
            self.deliveries.popitem(last=False)
        task = asyncio.get_running_loop().create_task(self._deliver(delivery), name=f"delivery {delivery.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return delivery

    async def _deliver(self, delivery: Delivery) -> None:
        delays = self.config.callback_retry_delays
        try:
            for number in range(1, len(delays) + 2):
                if number > 1:
                    await asyncio.sleep(delays[number - 2])
                attempt = await self.attempt(delivery.request, number)
                delivery.attempts.append(attempt)
                log.info(
                    "callback %s to %s attempt %d: %s in %.0f ms",
                    delivery.id,
                    delivery.request.url,
                    number,
                    attempt.status if attempt.status is not None else attempt.error,
                    attempt.latency_ms,
                )
                if attempt.status == 200:
                    delivery.outcome = "delivered"
                    return
            delivery.outcome = "failed"
        except asyncio.CancelledError:
            delivery.outcome = "cancelled"
            raise
        finally:
            delivery.done.set()

    def max_duration(self) -> float:
        """Upper bound of one delivery: every attempt timing out, plus every pause."""
        delays = self.config.callback_retry_delays
        return (len(delays) + 1) * self.config.callback_timeout + sum(delays)

    async def wait(self, deliveries: Iterable[Delivery]) -> None:
        """Wait until each delivery has succeeded or given up."""
        pending = [delivery.done.wait() for delivery in deliveries]
        if pending:
            async with asyncio.timeout(self.max_duration() + 5):
                await asyncio.gather(*pending)
