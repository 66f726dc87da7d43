"""Concurrent callers asking for the same thing share one computation (a fetch, a refresh).

A fleet of puppets registering at once, or a storm of token requests, would otherwise start the same
upstream call once per caller. The shared task is shielded: one caller's cancellation does not cancel
the work the others wait for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[T]] = {}

    async def run(self, key: str, start: Callable[[], Awaitable[T]]) -> T:
        """``await start()``, unless a call for ``key`` is already under way: then wait for that one."""
        return await asyncio.shield(self.start(key, start))

    def start(self, key: str, start: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        """Start ``start()`` unless a call for ``key`` is under way; either way, the shared call (for a
        refresh nobody waits for: the caller should retrieve its exception, if any)."""
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(start())
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return task
