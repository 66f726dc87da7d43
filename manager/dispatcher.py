"""Deliver each account's newest callback to its puppet: at least once, in order, one account at a time.

Work reaches the dispatcher two ways: :meth:`Dispatcher.notify` right after this process accepted an
event (the fast path), and a sweep of due mailboxes every ``sweep_interval`` (retries coming due,
puppets back online, events accepted by other replicas, work left by a crashed process).

An account is served only under its lease. Leases are sticky: kept while the account is active,
renewed in one batched write, released after ``idle_release`` seconds without work, and expiring by
themselves when a process dies. Per account at most one delivery is in flight; whatever arrives
meanwhile is coalesced into the next one.

Failures: an unreachable puppet (refused, timed out) is marked offline and its mailbox parked —
nothing is dropped, and it flows the moment the puppet is seen again. A reachable puppet that keeps
failing (non-2xx) backs off along the retry schedule and is dead-lettered after the last delay.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from manager import metrics
from manager.mailbox import Latest, Mailbox, MailboxStore
from manager.puppets import Puppet, PuppetRegistry
from wxkf.delivery import DeliveryError
from wxkf.retry import RetrySchedule
from wxkf.tasks import run_every, stop_tasks

log = logging.getLogger(__name__)


class PuppetUnreachable(DeliveryError):
    """No HTTP answer at all (refused, reset, timed out): the puppet is probably down."""


Deliver = Callable[[Puppet, Latest], Awaitable[None]]


@dataclass
class _Account:
    key: str
    delivered: str = ""
    next: Latest | None = None
    attempts: int = 0
    backoff_until: float = 0.0
    busy: bool = False
    last_active: float = field(default_factory=time.monotonic)

    def offer(self, latest: Latest | None) -> None:
        if latest is None or latest.arrival <= self.delivered:
            return
        if self.next is None or latest.arrival > self.next.arrival:
            self.next = latest

    @property
    def has_work(self) -> bool:
        return self.next is not None and self.next.arrival > self.delivered


@dataclass(frozen=True)
class DispatchConfig:
    owner: str
    schedule: RetrySchedule = field(default_factory=RetrySchedule)
    lease_ttl: float = 30.0
    idle_release: float = 15.0
    sweep_interval: float = 1.0
    probe_interval: float = 5.0
    probe_backoff_max: float = 300.0


class Dispatcher:
    def __init__(
        self,
        store: MailboxStore,
        puppets: PuppetRegistry,
        deliver: Deliver,
        probe: Callable[[Puppet], Awaitable[bool]],
        config: DispatchConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._puppets = puppets
        self._deliver = deliver
        self._probe = probe
        self.config = config
        self._clock = clock
        self._held: dict[str, _Account] = {}
        self._acquiring: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self.outcomes: collections.Counter[str] = collections.Counter()
        self._progress = asyncio.Condition()

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self._loops = [
            asyncio.create_task(
                run_every(self.sweep, self.config.sweep_interval, "dispatch sweep"), name="dispatch:sweep"
            ),
            asyncio.create_task(
                run_every(self._leases, self.config.lease_ttl / 3, "lease renewal"), name="dispatch:leases"
            ),
            asyncio.create_task(
                run_every(self.probe_offline, self.config.probe_interval, "offline probe"),
                name="dispatch:probe",
            ),
        ]

    async def stop(self) -> None:
        await stop_tasks([*self._loops, *self._tasks])
        try:
            await self._store.release(list(self._held), self.config.owner)
        except Exception:
            log.warning("could not release leases on stop; they expire in %.0f s", self.config.lease_ttl)
        self._held.clear()

    async def _record(self, outcome: str) -> None:
        metrics.DISPATCHES.labels(outcome).inc()
        async with self._progress:
            self.outcomes[outcome] += 1
            self._progress.notify_all()

    async def wait_until(self, predicate: Callable[[collections.Counter[str]], bool], timeout: float) -> None:
        """Wait until ``predicate(outcomes)`` holds (outcomes: delivered, failed, dead, parked, offline)."""
        async with asyncio.timeout(timeout), self._progress:
            await self._progress.wait_for(lambda: predicate(self.outcomes))

    # -- entry points -----------------------------------------------------------------------
    def notify(self, key: str, latest: Latest | None = None) -> None:
        """New work for ``key`` (accepted here, or un-parked): serve it now if we can."""
        account = self._held.get(key)
        if account is not None:
            account.offer(latest)
            if account.has_work and not account.busy:
                self._spawn(self._serve(account))
        elif key not in self._acquiring:
            self._acquiring.add(key)
            self._spawn(self._acquire_and_serve(key, latest))

    async def sweep(self) -> int:
        """Kick every due mailbox this process may serve. Returns how many were kicked."""
        kicked = 0
        for mailbox in await self._store.due(self.config.owner):
            account = self._held.get(mailbox.key)
            if account is None:
                if mailbox.key not in self._acquiring:
                    self._acquiring.add(mailbox.key)
                    self._spawn(self._acquire_and_serve(mailbox.key, None))
                    kicked += 1
                continue
            self._adopt(account, mailbox)
            if not account.has_work:
                await self._store.park(mailbox.key)  # due_at without work: clear it
            elif not account.busy:
                self._spawn(self._serve(account))
                kicked += 1
        return kicked

    # -- serving one account ----------------------------------------------------------------
    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _adopt(self, account: _Account, mailbox: Mailbox) -> None:
        account.delivered = max(account.delivered, mailbox.delivered)
        account.attempts = mailbox.attempts
        account.backoff_until = mailbox.backoff_until
        account.offer(mailbox.latest)

    async def _acquire_and_serve(self, key: str, hint: Latest | None) -> None:
        try:
            mailbox = await self._store.lease(key, self.config.owner, self.config.lease_ttl)
        finally:
            self._acquiring.discard(key)
        if mailbox is None:
            return  # another replica serves it; it will see our write
        account = self._held.setdefault(key, _Account(key))
        self._adopt(account, mailbox)
        account.offer(hint)
        if not account.busy:
            await self._serve(account)

    async def _serve(self, account: _Account) -> None:
        if account.busy:
            return
        account.busy = True
        try:
            await self._drain(account)
        except Exception:
            log.exception("dispatch for %s failed; the sweep will retry", account.key)
        finally:
            account.busy = False
            account.last_active = time.monotonic()

    async def _drain(self, account: _Account) -> None:
        while account.has_work and account.key in self._held:
            assert account.next is not None
            latest = account.next
            if self._clock() < account.backoff_until:
                return  # due_at == backoff_until: the sweep brings it back
            puppet = await self._puppets.get(account.key)
            if puppet is None or not puppet.live:
                await self._store.park(account.key)
                await self._record("parked")
                return
            try:
                await self._deliver(puppet, latest)
            except PuppetUnreachable as exc:
                log.warning("puppet %s unreachable (%s); parked until it is back", account.key, exc)
                await self._puppets.mark_offline(account.key, self._clock() + self.config.probe_interval, 0)
                await self._store.park(account.key)
                await self._record("offline")
                return
            except DeliveryError as exc:
                await self._failed(account, latest, str(exc))
                continue
            account.delivered = latest.arrival
            account.attempts = 0
            account.backoff_until = 0.0
            await self._store.delivered(account.key, self.config.owner, latest.arrival)
            await self._record("delivered")

    async def _failed(self, account: _Account, latest: Latest, error: str) -> None:
        account.attempts += 1
        delay = self.config.schedule.delay_after(account.attempts)
        if delay is None:
            log.warning(
                "dead-lettering %s up to %s after %d attempts: %s",
                account.key,
                latest.event_id,
                account.attempts,
                error,
            )
            await self._store.dead_letter(account.key, account.delivered, latest.arrival, error)
            account.delivered = latest.arrival
            account.attempts = 0
            account.backoff_until = 0.0
            await self._record("dead")
            return
        account.backoff_until = self._clock() + delay
        log.warning(
            "delivery to %s failed (%s); attempt %d, retry in %.0f s",
            account.key,
            error,
            account.attempts,
            delay,
        )
        await self._store.failed(account.key, account.attempts, account.backoff_until, error)
        await self._record("failed")

    # -- leases and liveness ----------------------------------------------------------------
    async def _leases(self) -> None:
        """Renew held leases in one write, release idle ones, forget any we lost."""
        owner = self.config.owner
        now = time.monotonic()
        idle = [
            key
            for key, account in self._held.items()
            if not account.busy
            and not account.has_work
            and now - account.last_active > self.config.idle_release
        ]
        for key in idle:
            del self._held[key]
        await self._store.release(idle, owner)
        await self._store.renew(list(self._held), owner, self.config.lease_ttl)
        actual = set(await self._store.held(owner))
        for key in [key for key in self._held if key not in actual]:
            log.warning("lost the lease on %s to another replica", key)
            del self._held[key]

    async def probe_offline(self) -> int:
        """Probe offline puppets whose time has come; un-park the ones that answer."""
        revived = 0
        for puppet, failures in await self._puppets.due_for_probe():
            if await self._probe(puppet):
                await self.back_online(puppet.key)
                revived += 1
            else:
                delay = min(
                    self.config.probe_backoff_max, self.config.probe_interval * 2 ** min(failures + 1, 16)
                )
                await self._puppets.mark_offline(puppet.key, self._clock() + delay, failures + 1)
        return revived

    async def back_online(self, key: str) -> None:
        """A puppet registered, sent a heartbeat or answered a probe: flow its queue at once."""
        await self._puppets.mark_online(key)
        await self._store.unpark([key])
        account = self._held.get(key)
        if account is not None:
            account.backoff_until = 0.0
            account.attempts = 0
        self.notify(key)

    @property
    def held(self) -> int:
        return len(self._held)
