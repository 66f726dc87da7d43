"""Deliver each account's newest callback to its puppet: at least once, in order, one account at a time.

Work reaches the dispatcher two ways: :meth:`Dispatcher.notify` right after this process accepted an
event (the fast path), and a sweep of due mailboxes every ``sweep_interval`` (retries coming due,
puppets back online, events accepted by other replicas, work left by a crashed process).

The fast path writes nothing per delivery: events of a live account are only logged, the delivery
settles them in this process's :class:`~manager.ledger.Ledger`, and how far delivery got reaches the
mailbox lazily, ``delivery_marks_per_sweep`` accounts a second (and on release and stop). The mailbox
is written at once only when it matters to someone else: it is due (so it must be cleared), the
account backs off or is parked, or another replica holds its lease.

An account is served only under its lease. Leases are sticky: kept while the account is active,
released after ``idle_release`` seconds without work, and ended by the replica that takes over a
dead process (:mod:`manager.recovery`). There is no per-account renewal: liveness is the replica's
own checkpoint, one write a second whatever the number of accounts. Per account at most one delivery
is in flight; whatever arrives meanwhile is coalesced into the next one.

Failures: an unreachable puppet (refused, timed out) is marked offline and its mailbox parked —
nothing is dropped, and it flows the moment the puppet is seen again. A reachable puppet that keeps
failing (non-2xx) backs off along the retry schedule and is dead-lettered after the last delay.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from manager import metrics
from manager.ledger import Ledger
from manager.mailbox import Latest, Mailbox, MailboxStore
from manager.puppets import Puppet, PuppetRegistry
from wxkf.delivery import DeliveryError
from wxkf.delivery import Unreachable as PuppetUnreachable
from wxkf.retry import RetrySchedule
from wxkf.tasks import run_every, stop_tasks

log = logging.getLogger(__name__)


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
    flushed: str = ""  # how far ``delivered`` is written to the mailbox
    flushed_at: float = 0.0  # monotonic time of that write
    mailbox_due: bool = False  # the mailbox may have due_at set: clear it after the next delivery

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
    housekeeping_interval: float = 10.0
    delivery_marks_per_sweep: int = 10
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
        ledger: Ledger,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._ledger = ledger
        self._puppets = puppets
        self._deliver = deliver
        self._probe = probe
        self.config = config
        self._clock = clock
        self._held: dict[str, _Account] = {}
        self._acquiring: dict[str, Latest | None] = {}  # key -> newest hint offered meanwhile
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
                run_every(self._housekeeping, self.config.housekeeping_interval, "dispatch housekeeping"),
                name="dispatch:housekeeping",
            ),
            asyncio.create_task(
                run_every(self.probe_offline, self.config.probe_interval, "offline probe"),
                name="dispatch:probe",
            ),
        ]

    async def stop(self) -> None:
        await stop_tasks([*self._loops, *self._tasks])
        try:
            await self._flush_delivered()
            await self._store.release(list(self._held), self.config.owner)
        except Exception:
            log.warning("could not release leases on stop; they end when this replica is taken over")
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
        elif key in self._acquiring:
            hint = self._acquiring[key]
            if hint is None or (latest is not None and latest.arrival > hint.arrival):
                self._acquiring[key] = latest
        else:
            self._acquiring[key] = latest
            self._spawn(self._acquire_and_serve(key))

    async def sweep(self) -> int:
        """Kick every due mailbox this process may serve, and every account it still owes something
        (a delivery that raised). Returns how many were kicked."""
        kicked = 0
        # A few delivery marks per sweep, not all at once: a batch of one update per active account
        # every few seconds stalled intake behind it (SecantusDB: ~1 ms per updated document).
        await self._flush_delivered(limit=self.config.delivery_marks_per_sweep)
        for mailbox in await self._store.due(self.config.owner):
            account = self._held.get(mailbox.key)
            if account is None:
                if mailbox.key not in self._acquiring:
                    self.notify(mailbox.key)
                    kicked += 1
                continue
            self._adopt(account, mailbox)
            if not account.has_work:
                await self._store.park(mailbox.key)  # due_at without work: clear it
                account.mailbox_due = False
            elif not account.busy:
                self._spawn(self._serve(account))
                kicked += 1
        for key in self._ledger.accounts():
            account = self._held.get(key)
            if account is None and key not in self._acquiring:
                self.notify(key, self._ledger.newest(key))
                kicked += 1
            elif account is not None and account.has_work and not account.busy:
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
        account.flushed = max(account.flushed, mailbox.delivered)
        account.attempts = mailbox.attempts
        account.backoff_until = mailbox.backoff_until
        account.mailbox_due = account.mailbox_due or mailbox.due_at is not None
        account.offer(mailbox.latest)

    async def _acquire_and_serve(self, key: str) -> None:
        try:
            mailbox = await self._store.lease(key, self.config.owner)
        except BaseException:
            self._acquiring.pop(key, None)
            raise
        if mailbox is None:
            self._acquiring.pop(key, None)
            # Another replica serves it: hand over what we owe through the mailbox, which it sweeps.
            await self._hand_over(key)
            return
        account = self._held.setdefault(key, _Account(key))
        self._adopt(account, mailbox)
        account.offer(self._acquiring.pop(key, None))
        account.offer(self._ledger.newest(key))
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

    async def _hand_over(self, key: str) -> None:
        """Put what this process owes for ``key`` into its mailbox, due now, for whoever serves it."""
        newest = self._ledger.newest(key)
        if newest is not None:
            await self._store.bump(key, newest, due=True)
            self._ledger.settle(key, newest.arrival)

    async def _drain(self, account: _Account) -> None:
        key = account.key
        while account.has_work and key in self._held:
            assert account.next is not None
            latest = account.next
            if self._clock() < account.backoff_until:
                # due_at == backoff_until: the sweep brings it back; newer work waits in the mailbox
                if self._ledger.owes(key):
                    await self._store.bump(key, latest, due=False)
                    self._ledger.settle(key, latest.arrival)
                return
            puppet = await self._puppets.get(key)
            if puppet is None or not puppet.live:
                await self._park(account, latest, "parked")
                return
            try:
                await self._deliver(puppet, latest)
            except PuppetUnreachable as exc:
                log.warning("puppet %s unreachable (%s); parked until it is back", key, exc)
                await self._puppets.mark_offline(key, self._clock() + self.config.probe_interval, 0)
                await self._park(account, latest, "offline")
                return
            except DeliveryError as exc:
                await self._failed(account, latest, str(exc))
                continue
            account.delivered = latest.arrival
            account.attempts = 0
            account.backoff_until = 0.0
            self._ledger.settle(key, latest.arrival)
            if account.mailbox_due:
                await self._store.delivered(key, self.config.owner, latest.arrival)
                account.flushed = max(account.flushed, latest.arrival)
                account.mailbox_due = False
            await self._record("delivered")

    async def _park(self, account: _Account, latest: Latest, outcome: str) -> None:
        await self._store.park(account.key, latest)
        self._ledger.settle(account.key, latest.arrival)
        account.mailbox_due = False
        await self._record(outcome)

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
            self._ledger.settle(account.key, latest.arrival)
            account.delivered = account.flushed = latest.arrival
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
        await self._store.failed(account.key, latest, account.attempts, account.backoff_until, error)
        self._ledger.settle(account.key, latest.arrival)
        account.mailbox_due = True
        await self._record("failed")

    # -- leases and liveness ----------------------------------------------------------------
    async def _flush_delivered(self, keys: Iterable[str] | None = None, limit: int | None = None) -> None:
        """Write how far delivery got for accounts (of ``keys``, default all held) that advanced since
        their last flush, the ``limit`` longest-unflushed first, in one batch."""
        candidates = [
            (account.flushed_at, key, account.delivered)
            for key in (self._held if keys is None else keys)
            if (account := self._held.get(key)) is not None and account.delivered > account.flushed
        ]
        marks = {key: arrival for _, key, arrival in sorted(candidates)[:limit]}
        await self._store.record_delivered(marks)
        now = time.monotonic()
        for key, arrival in marks.items():
            if (account := self._held.get(key)) is not None:
                account.flushed = max(account.flushed, arrival)
                account.flushed_at = now

    async def _housekeeping(self) -> None:
        """Release idle leases, recording their delivery progress first."""
        owner = self.config.owner
        now = time.monotonic()
        idle = [
            key
            for key, account in self._held.items()
            if not account.busy
            and not account.has_work
            and not self._ledger.owes(key)
            and now - account.last_active > self.config.idle_release
        ]
        await self._flush_delivered(idle)
        for key in idle:
            del self._held[key]
        await self._store.release(idle, owner)

    async def lost_all_leases(self) -> None:
        """Another replica took this one over as dead and ended its leases: stop serving what we
        held, and hand what we owe to whoever serves those accounts now (through their mailboxes)."""
        held, self._held = self._held, {}
        if held:
            log.warning("this replica was taken over as dead; dropping %d leases", len(held))
        for key in held:
            await self._hand_over(key)

    async def probe_offline(self) -> int:
        """Probe offline puppets whose time has come; un-park the ones that answer."""
        revived = 0
        for puppet, failures in await self._puppets.due_for_probe():
            if await self._probe(puppet):
                await self._puppets.mark_online(puppet.key)
                await self.back_online(puppet.key)
                revived += 1
            else:
                delay = min(
                    self.config.probe_backoff_max, self.config.probe_interval * 2 ** min(failures + 1, 16)
                )
                await self._puppets.mark_offline(puppet.key, self._clock() + delay, failures + 1)
        return revived

    async def back_online(self, key: str) -> None:
        """A puppet registered, sent a heartbeat or answered a probe (and is marked online): flow its
        queue at once."""
        await self._store.unpark([key])
        account = self._held.get(key)
        if account is not None:
            account.backoff_until = 0.0
            account.attempts = 0
            account.mailbox_due = True  # un-parking may have made it due
        self.notify(key)

    def delivered_through(self, key: str) -> str:
        """How far delivery got for ``key`` as this process knows it (the mailbox may lag behind)."""
        account = self._held.get(key)
        return account.delivered if account is not None else ""

    @property
    def held(self) -> int:
        return len(self._held)
