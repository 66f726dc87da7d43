"""Forward stored callbacks to their targets (the manager, subscriptions), retried until acknowledged.

Each target has its own FIFO and worker, so one slow or dead receiver holds up only its own events.
Delivery happens in waves of up to ``concurrency`` events. Each attempt ends one of three ways
(:mod:`wxkf.delivery`):

- acknowledged (a 2xx): the event is done for that target;
- refused for good (``DeliveryError.permanent``: a 3xx, or a 4xx other than 408/425/429, or a target
  that no longer exists): the event is dead-lettered for that target at once, kept and visible
  (``Inbox.dead_letters``) and replayable, so it never blocks the events behind it;
- failed for now (unreachable, timed out, 5xx, 408/425/429): the event goes back to the head of the
  queue and the target backs off along the :class:`~wxkf.retry.RetrySchedule`, only the oldest event
  probing it; the first success drains the whole backlog at once. An event still failing after the
  schedule's total time is dead-lettered, except for targets named in ``persistent`` (the manager):
  those are retried until acknowledged, probed at least every ``persistent_probe_interval`` seconds.

Invariant: an event taken from a queue is either finished (done or dead) or back in the queue before
the wave ends, whatever raises; a failing database write costs a retry, never the event or the worker.
A target whose queue is empty and whose sink is gone (a deleted subscription) is dropped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.inbox import DEAD, DONE, Inbox
from wxkf.delivery import DeliveryError
from wxkf.retry import JITTER, RetrySchedule
from wxkf.tasks import finished_within, stop_tasks

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
        persistent_probe_interval: float = 30.0,
    ) -> None:
        self._inbox = inbox
        self._resolve = resolve
        self._schedule = schedule or RetrySchedule()
        self._concurrency = concurrency
        self._clock = clock
        self._targets: dict[str, _Target] = {}
        self._remaining: dict[str, set[str]] = {}
        self._outcome: dict[str, str] = {}
        self._finished: list[tuple[str, str, str]] = []  # (event id, dead target or "", its error)
        self._finish_wake = asyncio.Event()
        self._finisher: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._on_result = on_result or (lambda target, result: None)
        self._closed = False
        self._persistent = persistent
        self._persistent_probe_interval = persistent_probe_interval
        self._idle = asyncio.Event()
        self._idle.set()

    # -- feeding ----------------------------------------------------------------------------
    def submit(self, doc: dict[str, Any]) -> None:
        """Queue a stored document's pending targets (called after the durable write).

        Targets already queued for this event are left alone, so a replay of one dead-lettered target
        while another is still being forwarded adds only the replayed one.
        """
        pending = {name for name, state in doc.get("targets", {}).items() if state.get("state") == "pending"}
        remaining = self._remaining.get(doc["_id"], set())
        new = pending - remaining
        if not new:
            return
        self._remaining[doc["_id"]] = remaining | new
        self._outcome.pop(doc["_id"], None)  # a replay: the dead-lettered target gets another chance
        self._idle.clear()
        for name in sorted(new):
            target = self._target(name)
            target.queue.append(doc)
            target.wake.set()

    def prune(self) -> None:
        """Let idle workers whose target is gone (a deleted subscription) end; call after a reload."""
        for target in self._targets.values():
            if not target.queue:
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

    @property
    def targets(self) -> list[str]:
        """Names of the targets that have a worker."""
        return list(self._targets)

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
        await self.flush()

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
                if self._resolve(target.name) is None:  # nothing queued and nowhere to send: done
                    if self._targets.get(target.name) is target:
                        del self._targets[target.name]
                    return
                target.wake.clear()
                await target.wake.wait()
                continue
            wait = target.resume_at - self._clock()
            if wait > 0:
                target.wake.clear()
                await finished_within(target.wake.wait(), wait)
                continue
            try:
                await self._wave(target)
            except Exception:  # the wave put its events back; back off and try again
                log.exception("forwarding to %s failed unexpectedly; retrying", target.name)
                target.failures += 1
                target.resume_at = self._clock() + self._delay(target)

    async def _wave(self, target: _Target) -> None:
        size = self._concurrency if target.failures == 0 else 1
        wave = [target.queue.popleft() for _ in range(min(size, len(target.queue)))]
        try:
            results = await self._attempt_all(target.name, wave)
        except BaseException:  # cancelled (shutdown) or a bug: nothing of the wave may be lost
            target.queue.extendleft(reversed(wave))
            raise
        # From here to the requeue nothing awaits, so every event is finished or queued again.
        retry: list[tuple[dict[str, Any], DeliveryError]] = []
        dead: list[tuple[dict[str, Any], DeliveryError]] = []
        now = self._clock()
        horizon = sum(self._schedule.delays)
        for doc, error in zip(wave, results, strict=True):
            if error is None:
                self._finish(doc["_id"], target.name, DONE, None)
            elif error.permanent or (
                target.name not in self._persistent and now - doc["received_at"] > horizon
            ):
                self._finish(doc["_id"], target.name, DEAD, str(error))
                dead.append((doc, error))
            else:
                doc["targets"][target.name]["attempts"] = doc["targets"][target.name].get("attempts", 0) + 1
                retry.append((doc, error))
        target.queue.extendleft(reversed([doc for doc, _ in retry]))
        if dead:
            log.warning(
                "dead-lettered %d event(s) for %s (replay: POST /admin/events/{id}/replay), first %s: %s",
                len(dead),
                target.name,
                dead[0][0]["_id"],
                dead[0][1],
            )
        if not retry:  # acknowledged or refused: either way the receiver answers
            target.failures = 0
            target.resume_at = 0.0
            return
        target.failures += 1
        delay = self._delay(target)
        target.resume_at = now + delay
        log.warning(
            "forward to %s failed (%s); %d queued, next attempt in %.1f s",
            target.name,
            retry[0][1],
            len(target.queue),
            delay,
        )
        try:
            for doc, error in retry:
                attempts = doc["targets"][target.name]["attempts"]
                await self._inbox.record_attempt(doc["_id"], target.name, attempts, str(error))
        except Exception as exc:  # bookkeeping only: the events are queued either way
            log.warning("could not record failed forwards to %s: %s", target.name, exc)

    def _delay(self, target: _Target) -> float:
        """Seconds to wait after ``target.failures`` failed waves in a row."""
        delay = self._schedule.delay_after(min(target.failures, len(self._schedule.delays))) or 0.0
        if target.name in self._persistent:  # never given up on: keep probing it often enough
            # jittered below the cap, so replicas that lost the manager together do not probe in step
            delay = min(delay, self._persistent_probe_interval * JITTER.uniform(0.8, 1.0))
        return delay

    async def _attempt_all(self, name: str, wave: list[dict[str, Any]]) -> list[DeliveryError | None]:
        sink = self._resolve(name)
        if sink is None:  # e.g. a subscription deleted after the event was stored
            gone = DeliveryError("target no longer exists", permanent=True)
            return [gone] * len(wave)
        return await asyncio.gather(*(self._attempt(sink, doc) for doc in wave))

    async def _attempt(self, sink: Sink, doc: Mapping[str, Any]) -> DeliveryError | None:
        try:
            await sink.deliver(doc)
            return None
        except DeliveryError as exc:
            return exc
        except Exception as exc:  # a bug in a sink must not kill the worker, nor drop the event
            log.exception("sink failed unexpectedly")
            return DeliveryError(f"internal error: {type(exc).__name__}")

    # -- completion -------------------------------------------------------------------------
    def _finish(self, event_id: str, target: str, state: str, error: str | None) -> None:
        self._on_result(target, state)
        remaining = self._remaining.get(event_id)
        if remaining is None:
            return
        remaining.discard(target)
        if state == DEAD:
            self._outcome[event_id] = DEAD
        self._finished.append((event_id, target, error or "") if state == DEAD else (event_id, "", ""))
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
                await self.flush()
            except Exception:
                log.exception("recording finished forwards failed; will retry")
                await asyncio.sleep(1.0)
                self._finish_wake.set()

    async def flush(self) -> None:
        """Record every forward finished so far in the inbox (batched: one update_many for every event
        that is completely done). One flush at a time, so a caller also waits for one in progress."""
        async with self._flush_lock:
            await self._flush_batch()

    async def _flush_batch(self) -> None:
        batch, self._finished = self._finished, []
        done: list[str] = []
        dead: list[str] = []
        seen: set[str] = set()
        try:
            for event_id, dead_target, error in batch:
                if dead_target:
                    await self._inbox.dead_letter(event_id, dead_target, error)
                if event_id in self._remaining or event_id in seen:
                    continue
                seen.add(event_id)
                (dead if self._outcome.pop(event_id, DONE) == DEAD else done).append(event_id)
            await self._inbox.finish(done, DONE)
            await self._inbox.finish(dead, DEAD)
        except BaseException:  # failed or cancelled (shutdown): keep the batch for the next flush
            self._finished[:0] = batch
            raise
