"""Forward stored callbacks to their targets (the manager, subscriptions), retried until acknowledged.

Each target has its own FIFO and worker, so one slow or dead receiver holds up only its own events.
Delivery happens in waves of up to ``concurrency`` events. When a wave has failures the target backs
off along the :class:`~wxkf.retry.RetrySchedule` (only the oldest event probes it); the first success
drains its whole backlog at once. An event still undelivered after the schedule's total time is
dead-lettered (kept and visible), except for targets named in ``persistent``: those are retried
until acknowledged, at the schedule's last interval.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.inbox import DEAD, DONE, Inbox
from wxkf.delivery import DeliveryError
from wxkf.retry import RetrySchedule
from wxkf.tasks import stop_tasks

log = logging.getLogger(__name__)


class Sink(Protocol):
    async def deliver(self, doc: Mapping[str, Any]) -> None: ...


SinkResolver = Callable[[str], Sink | None]


@dataclass
class _Target:
    name: str
    queue: collections.deque[dict[str, Any]] = field(default_factory=collections.deque)
    failures: int = 0
    resume_at: float = 0.0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Forwarder:
    def __init__(
        self,
        inbox: Inbox,
        resolve: SinkResolver,
        *,
        schedule: RetrySchedule | None = None,
        concurrency: int = 16,
        clock: Callable[[], float] = time.time,
        on_result: Callable[[str, str], None] | None = None,
        persistent: frozenset[str] = frozenset(),
    ) -> None:
        self._inbox = inbox
        self._resolve = resolve
        self._schedule = schedule or RetrySchedule()
        self._concurrency = concurrency
        self._clock = clock
        self._targets: dict[str, _Target] = {}
        self._remaining: dict[str, set[str]] = {}
        self._outcome: dict[str, str] = {}
        self._finished: list[tuple[str, str]] = []
        self._finish_wake = asyncio.Event()
        self._finisher: asyncio.Task[None] | None = None
        self._on_result = on_result or (lambda target, result: None)
        self._closed = False
        self._persistent = persistent
        self._idle = asyncio.Event()
        self._idle.set()

    # -- feeding ----------------------------------------------------------------------------
    def submit(self, doc: dict[str, Any]) -> None:
        """Queue a stored document's pending targets (called after the durable write)."""
        pending = [name for name, state in doc.get("targets", {}).items() if state.get("state") == "pending"]
        if not pending or doc["_id"] in self._remaining:
            return
        self._remaining[doc["_id"]] = set(pending)
        self._idle.clear()
        for name in pending:
            target = self._target(name)
            target.queue.append(doc)
            target.wake.set()

    async def recover(self, owner: str | None = None) -> int:
        """Queue every unfinished document of ``owner`` (default: this replica). Returns the count."""
        count = 0
        async for doc in self._inbox.pending(owner):
            if owner is not None and owner != self._inbox.owner:
                claimed = await self._inbox.claim(doc["_id"], owner)
                if claimed is None:
                    continue
                doc = claimed
            self.submit(doc)
            count += 1
        return count

    @property
    def backlog(self) -> int:
        return len(self._remaining)

    def target_backlog(self, name: str) -> int:
        target = self._targets.get(name)
        return len(target.queue) if target else 0

    async def wait_idle(self) -> None:
        """Return once every queued event has reached all its targets (or been dead-lettered)."""
        await self._idle.wait()

    async def close(self) -> None:
        self._closed = True
        for target in self._targets.values():
            target.wake.set()
        self._finish_wake.set()
        tasks = [t.task for t in self._targets.values() if t.task] + (
            [self._finisher] if self._finisher else []
        )
        await stop_tasks(tasks)
        await self._flush_finished()

    # -- workers ----------------------------------------------------------------------------
    def _target(self, name: str) -> _Target:
        target = self._targets.get(name)
        if target is None:
            target = self._targets[name] = _Target(name)
            target.task = asyncio.create_task(self._run_target(target), name=f"forward:{name}")
        if self._finisher is None:
            self._finisher = asyncio.create_task(self._run_finisher(), name="forward:finisher")
        return target

    async def _run_target(self, target: _Target) -> None:
        while not self._closed:
            if not target.queue:
                target.wake.clear()
                await target.wake.wait()
                continue
            wait = target.resume_at - self._clock()
            if wait > 0:
                target.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(target.wake.wait(), timeout=wait)
                continue
            await self._wave(target)

    async def _wave(self, target: _Target) -> None:
        size = self._concurrency if target.failures == 0 else 1
        wave = [target.queue.popleft() for _ in range(min(size, len(target.queue)))]
        sink = self._resolve(target.name)
        if sink is None:  # e.g. a subscription deleted after the event was stored
            for doc in wave:
                self._finish(doc["_id"], target.name, DEAD, "target no longer exists")
            return
        results = await asyncio.gather(*(self._attempt(sink, doc) for doc in wave))
        failed = []
        for doc, error in zip(wave, results, strict=True):
            if error is None:
                self._finish(doc["_id"], target.name, DONE, None)
            else:
                failed.append((doc, error))
        if not failed:
            target.failures = 0
            target.resume_at = 0.0
            return
        target.failures += 1
        now = self._clock()
        horizon = sum(self._schedule.delays)
        for doc, error in reversed(failed):
            attempts = doc["targets"][target.name].get("attempts", 0) + 1
            doc["targets"][target.name]["attempts"] = attempts
            if target.name not in self._persistent and now - doc["received_at"] > horizon:
                log.warning("dead-lettering event %s for %s: %s", doc["_id"], target.name, error)
                self._finish(doc["_id"], target.name, DEAD, error)
                continue
            target.queue.appendleft(doc)
            await self._inbox.record_attempt(doc["_id"], target.name, attempts, error)
        delay = self._schedule.delay_after(min(target.failures, len(self._schedule.delays)))
        target.resume_at = now + (delay or 0.0)
        log.warning(
            "forward to %s failed (%s); %d queued, next attempt in %.1f s",
            target.name,
            failed[0][1],
            len(target.queue),
            delay or 0.0,
        )

    async def _attempt(self, sink: Sink, doc: Mapping[str, Any]) -> str | None:
        try:
            await sink.deliver(doc)
            return None
        except DeliveryError as exc:
            return str(exc)
        except Exception as exc:  # a bug in a sink must not kill the worker
            log.exception("sink failed unexpectedly")
            return f"internal error: {type(exc).__name__}"

    # -- completion -------------------------------------------------------------------------
    def _finish(self, event_id: str, target: str, state: str, error: str | None) -> None:
        self._on_result(target, state)
        remaining = self._remaining.get(event_id)
        if remaining is None:
            return
        remaining.discard(target)
        if state == DEAD:
            self._outcome[event_id] = DEAD
        self._finished.append((event_id, target if state == DEAD else ""))
        if not remaining:
            del self._remaining[event_id]
        self._finish_wake.set()
        if not self._remaining:
            self._idle.set()

    async def _run_finisher(self) -> None:
        while not self._closed:
            await self._finish_wake.wait()
            self._finish_wake.clear()
            try:
                await self._flush_finished()
            except Exception:
                log.exception("recording finished forwards failed; will retry")
                await asyncio.sleep(1.0)
                self._finish_wake.set()

    async def _flush_finished(self) -> None:
        """Batch the state updates: one update_many for every event that is completely done."""
        batch, self._finished = self._finished, []
        done: list[str] = []
        dead: list[str] = []
        seen: set[str] = set()
        try:
            for event_id, dead_target in batch:
                if dead_target:
                    await self._inbox.finish_target(event_id, dead_target, DEAD)
                if event_id in self._remaining or event_id in seen:
                    continue
                seen.add(event_id)
                (dead if self._outcome.pop(event_id, DONE) == DEAD else done).append(event_id)
            await self._inbox.finish(done, DONE)
            await self._inbox.finish(dead, DEAD)
        except BaseException:  # failed or cancelled (shutdown): keep the batch for the next flush
            self._finished[:0] = batch
            raise
