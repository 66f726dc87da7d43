"""Handlers in order per customer, concurrently across customers.

Each customer with work has one worker task that hands its items to ``handle`` one at a time, in the
order they were put; a customer's worker exists only while that customer has work, so an idle account
costs a dict and nothing else. A slow handler holds up its own customer only.

On :meth:`CustomerQueues.close` no new item starts; the ones running finish (up to a timeout). Items
still queued stay unfinished in the store and are handed to the bot at the next start.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from wxkf.tasks import stop_tasks

log = logging.getLogger(__name__)

T = TypeVar("T")


class CustomerQueues(Generic[T]):
    def __init__(self, handle: Callable[[T], Awaitable[None]], name: str = "") -> None:
        self._handle = handle
        self._name = name
        self._queues: dict[str, deque[T]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._closing = False

    def put(self, customer: str, item: T) -> None:
        if self._closing:
            return
        self._queues.setdefault(customer, deque()).append(item)
        if customer not in self._workers:
            self._workers[customer] = asyncio.create_task(
                self._work(customer), name=f"handle {self._name} {customer}"
            )

    @property
    def busy(self) -> int:
        """Customers with a handler running or queued."""
        return len(self._workers)

    async def _work(self, customer: str) -> None:
        queue = self._queues[customer]
        try:
            while queue and not self._closing:
                item = queue.popleft()
                try:
                    await self._handle(item)
                except Exception:  # handle() records its own failures; this is a last resort
                    log.exception("handling an item of %s %s failed", self._name, customer)
        finally:
            del self._workers[customer]
            if not queue:
                del self._queues[customer]

    async def close(self, timeout: float = 30.0) -> None:
        """Start nothing new; wait up to ``timeout`` s for the running handlers, then cancel them."""
        self._closing = True
        workers = list(self._workers.values())
        if not workers:
            return
        _, running = await asyncio.wait(workers, timeout=timeout)
        if running:
            log.warning(
                "%d handler(s) of %s still running after %.0f s; cancelling",
                len(running),
                self._name,
                timeout,
            )
            await stop_tasks(running)
