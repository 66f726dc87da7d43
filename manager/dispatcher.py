"""Deliver each account's newest callback to its puppet: at least once, in order, one account at a time.

Work reaches the dispatcher two ways: :meth:`Dispatcher.notify` right after this process accepted an
event (the fast path), and a sweep of due mailboxes every ``sweep_interval`` (retries coming due,
puppets back online, events accepted by other replicas, work left by a crashed process).

Each account this process serves is an :class:`~manager.account_state.Account`; which moves exist is
decided there (the table in docs/architecture.md), what each move does is here. The fast path writes
nothing per delivery: events of a live account are only logged, the delivery marks them done in
:class:`~manager.account_state.Undelivered`, and how far delivery got reaches the mailbox lazily,
``delivery_marks_per_sweep`` accounts a second (and on release and stop). The mailbox is written at
once only when it matters to someone else: it holds work (so a delivery must be recorded), the account
backs off or waits for its puppet, or another replica holds the lease.

An account is served only under its lease. Leases are sticky: kept while the account is active,
released after ``idle_release`` seconds without work (by epoch: a lease taken again meanwhile stays),
and ended by the replica that takes over a dead process (:mod:`manager.recovery`). There is no
per-account renewal: a delivery starts only while the replica's fence is valid (its last checkpoint
is recent enough that no one can have taken it over), and is cut off when the fence runs out; when
the replica learns it was taken over, every delivery in flight is cancelled and not recorded. Per
account at most one delivery is in flight; whatever arrives meanwhile is coalesced into the next one.

Failures: an unreachable puppet (refused, timed out) is marked offline and its account waits — nothing
is dropped, and it flows the moment the puppet is seen again. A reachable puppet that keeps failing
(non-2xx) backs off along the retry schedule and is dead-lettered after the last delay.

Socket puppets (:mod:`manager.sockets`) are reached only through the replica their WebSocket is open
to, which the puppet registry records (``socket_owner``). A lease holder whose delivery finds no
socket here, while another replica holds one, hands the account over: its work goes into the mailbox,
due now, and the lease is released, so that replica's sweep takes the account within a second. This
process's own sweep leaves such a mailbox to that replica for ``idle_release`` seconds.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from manager import metrics
from manager.account_state import HELD, Account, Event, State, Undelivered
from manager.delivery import AccountNotServed
from manager.mailbox import Latest, Mailbox, MailboxStore
from manager.puppets import Puppet, PuppetRegistry
from manager.recovery import Liveness
from wxkf.delivery import DeliveryError
from wxkf.delivery import Unreachable as PuppetUnreachable
from wxkf.retry import RetrySchedule
from wxkf.tasks import run_every, stop_tasks

log = logging.getLogger(__name__)

HANDED_OVER_KEPT = 50_000  # accounts remembered as served by another replica (least recent forgotten)

Deliver = Callable[[Puppet, Latest], Awaitable[None]]


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
        undelivered: Undelivered,
        liveness: Liveness,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._undelivered = undelivered
        self._liveness = liveness
        self._puppets = puppets
        self._deliver = deliver
        self._probe = probe
        self.config = config
        self._clock = clock
        self._monotonic = monotonic
        self._accounts: dict[str, Account] = {}  # every account in a state other than RELEASED
        # accounts handed over to the replica holding their puppet's socket -> when (monotonic)
        self._handed_over: OrderedDict[str, float] = OrderedDict()
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
                run_every(self.release_idle, self.config.housekeeping_interval, "dispatch housekeeping"),
                name="dispatch:housekeeping",
            ),
            asyncio.create_task(
                run_every(self.probe_offline, self.config.probe_interval, "offline probe"),
                name="dispatch:probe",
            ),
        ]

    async def stop(self) -> None:
        await stop_tasks([*self._loops, *self._tasks])
        held = {key: account for key, account in self._accounts.items() if account.state in HELD}
        self._accounts.clear()
        try:
            await self._store.record_delivered(_marks(held.values()))
            leases = {key: account.epoch for key, account in held.items()}
            await self._store.release(leases, self.config.owner)
        except Exception:
            log.warning("could not release leases on stop; they end when this replica is taken over")

    async def _record(self, outcome: str) -> None:
        metrics.DISPATCHES.labels(outcome).inc()
        async with self._progress:
            self.outcomes[outcome] += 1
            self._progress.notify_all()

    async def wait_until(self, predicate: Callable[[collections.Counter[str]], bool], timeout: float) -> None:
        """Wait until ``predicate(outcomes)`` holds (outcomes: delivered, failed, dead, parked, offline,
        not_served, handed_over)."""
        async with asyncio.timeout(timeout), self._progress:
            await self._progress.wait_for(lambda: predicate(self.outcomes))

    # -- entry points -----------------------------------------------------------------------
    def notify(self, key: str, latest: Latest | None = None) -> None:
        """New work for ``key`` (accepted here, or found in a mailbox): serve it now if we can."""
        account = self._accounts.get(key)
        if account is None:
            account = self._accounts[key] = Account(key, last_active=self._monotonic())
            account.offer(latest)
            account.apply(Event.WORK)
            account.task = self._spawn(self._acquire_and_serve(account))
            return
        if latest is not None:
            account.offer(latest)
            account.apply(Event.WORK)
        self._kick(account)

    async def recheck(self, key: str, mailbox: Mailbox | None = None) -> None:
        """The puppet of ``key`` is live, and its mailbox may hold work this process has not taken in
        (it waited for the puppet, or another replica wrote it): one delivery of the newest."""
        account = self._accounts.get(key)
        if account is None or account.state is State.ACQUIRING:
            self.notify(key)  # taking the lease reads the mailbox
            return
        await self._puppet_back(account, mailbox)

    async def sweep(self) -> int:
        """Kick every due mailbox this process may serve, and every account with work left here (a
        delivery that raised, or was fenced). Returns how many were kicked."""
        kicked = 0
        # A few delivery marks per sweep, not all at once: a batch of one update per active account
        # every few seconds stalled intake behind it (SecantusDB: ~1 ms per updated document).
        await self._flush_delivered(limit=self.config.delivery_marks_per_sweep)
        for mailbox in await self._store.due(self.config.owner):
            account = self._accounts.get(mailbox.key)
            if account is None:
                if mailbox.lease_owner != self.config.owner and self._left_to_socket_replica(mailbox.key):
                    continue
                self.notify(mailbox.key)
                kicked += 1
                continue
            if account.state is State.ACQUIRING:
                continue
            account.take_in(mailbox)
            if account.state is State.BACKING_OFF and self._clock() >= account.backoff_until:
                account.apply(Event.RETRY_DUE)
            elif account.state is State.WAITING:
                account.apply(Event.RETRY_DUE)  # made due by someone: look at the puppet again
            elif account.state is State.IDLE and account.has_work:
                account.apply(Event.WORK)
            if account.state is State.IDLE and not account.has_work:
                await self._store.clear_due(mailbox.key, mailbox.seq)  # due_at without work
                account.mailbox_due = False
            kicked += self._kick(account)
        for key in self._undelivered.accounts():
            if key not in self._accounts:
                self.notify(key, self._undelivered.newest(key))
                kicked += 1
        for account in list(self._accounts.values()):
            if account.state is State.PENDING:
                kicked += self._kick(account)
        return kicked

    # -- serving one account ----------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _kick(self, account: Account) -> int:
        """Run the account's serving loop unless it runs already; 1 if it was started."""
        if account.task is not None and not account.task.done():
            return 0
        if account.state not in (State.PENDING, State.BACKING_OFF, State.WAITING) or not account.dirty:
            return 0
        account.task = self._spawn(self._serve(account))
        return 1

    def _serving(self, account: Account) -> bool:
        return self._accounts.get(account.key) is account

    async def _acquire_and_serve(self, account: Account) -> None:
        key, life = account.key, self._liveness.life
        try:
            mailbox = await self._store.lease(key, self.config.owner, life)
        except BaseException:
            if self._serving(account):
                del self._accounts[key]
            raise
        if not self._serving(account):
            return  # every lease was lost meanwhile; that handed over what was here
        if mailbox is None or life != self._liveness.life:
            account.apply(Event.LEASED_ELSEWHERE)
            del self._accounts[key]
            # Another replica serves it: hand over what is undelivered here through the mailbox.
            await self._hand_over(key)
            return
        account.epoch = mailbox.lease_epoch
        self._handed_over.pop(key, None)
        account.take_in(mailbox)  # events accepted here meanwhile were offered with their notify
        account.apply(Event.LEASED)
        await self._serve(account)

    async def _serve(self, account: Account) -> None:
        try:
            while self._serving(account):
                if account.state is State.PENDING:
                    if not await self._deliver_next(account):
                        return
                elif account.state in (State.BACKING_OFF, State.WAITING) and account.dirty:
                    await self._held_back(account)
                else:
                    return
        except Exception:
            log.exception("dispatch for %s failed; the sweep will retry", account.key)
        finally:
            account.last_active = self._monotonic()

    async def _deliver_next(self, account: Account) -> bool:
        """One step of a PENDING account; False if it must wait for the sweep (fenced)."""
        key = account.key
        if not self._liveness.valid():
            return False  # no checkpoint recently enough: someone may be taking this replica over
        if self._clock() < account.backoff_until:
            account.apply(Event.NOT_DUE)
            await self._into_mailbox(account)  # due_at == backoff_until: the sweep brings it back
            return True
        puppet = await self._puppets.get(key)
        if puppet is None or not puppet.live:
            account.apply(Event.NO_PUPPET)
            await self._into_mailbox(account, waiting=True)
            await self._record("parked")
            await self._look_again(account)
            return True
        through, seq = self._undelivered.newest(key), account.mailbox_seq
        latest = account.start(self._monotonic())
        try:
            async with asyncio.timeout(self._liveness.remaining()):
                await self._deliver(puppet, latest)
        except (DeliveryError, TimeoutError) as exc:
            if not self._liveness.valid() or not isinstance(exc, DeliveryError):
                log.warning("delivery to %s cut off: this replica's lease fence ran out", key)
                account.dirty = True  # not delivered: still to do
                account.apply(Event.FENCED)
                return False
            if isinstance(exc, PuppetUnreachable):
                account.not_delivered(latest)
                # not served there: no probe (the process answers it, alive); only that registration
                stale = isinstance(exc, AccountNotServed)
                probe_at = None if stale else self._clock() + self.config.probe_interval
                registered_at = puppet.registered_at if stale else None
                if not await self._puppets.mark_offline(
                    key, probe_at, 0, by=self.config.owner, registered_at=registered_at
                ):
                    current = await self._puppets.fresh(key)
                    if current is not None and current.served_by_another(self.config.owner):
                        await self._hand_over_lease(account, current.socket_owner)
                        return True
                waits_for = "a registration" if stale else "it to be back"
                log.warning("puppet %s unreachable (%s); waiting for %s", key, exc, waits_for)
                account.apply(Event.NO_PUPPET)
                await self._into_mailbox(account, waiting=True)
                await self._record("not_served" if stale else "offline")
                if stale:  # registered anew meanwhile (not marked offline above): flow there
                    await self._look_again(account)
            else:
                await self._refused(account, latest, seq, through, str(exc))
            return True
        except Exception:
            account.dirty = True
            account.apply(Event.FENCED)
            raise
        account.apply(Event.DELIVERED)
        account.delivered = max(account.delivered, latest.arrival)
        account.attempts = 0
        account.backoff_until = 0.0
        self._undelivered.done(key, through)
        if account.mailbox_due:
            await self._store.delivered(key, seq, latest.arrival)
            account.mailbox_due = False
        await self._record("delivered")
        return True

    async def _held_back(self, account: Account) -> None:
        """New work for an account that backs off or waits for its puppet."""
        if account.state is State.BACKING_OFF:
            if self._clock() >= account.backoff_until:
                account.apply(Event.RETRY_DUE)
            else:
                await self._into_mailbox(account)
            return
        puppet = await self._puppets.get(account.key)
        if puppet is not None and puppet.live:  # seen again since (registered through another replica)
            await self._puppet_back(account)
        else:
            await self._into_mailbox(account, waiting=True)

    async def _into_mailbox(self, account: Account, *, waiting: bool = False) -> None:
        """Put the account's work into its mailbox; then nothing of it is left only in memory here.
        ``waiting``: not due (a puppet coming back makes it due), else due as it was (a retry time)."""
        key, newest = account.key, account.newest
        through = self._undelivered.newest(key)
        account.handed_over()
        account.mailbox_due = True
        if newest is not None:
            if not self._liveness.valid():  # perhaps no longer ours: make it due for whoever serves it
                await self._store.bump(key, newest, due=True)
            elif waiting:
                await self._store.park(key, newest)
            else:
                await self._store.bump(key, newest, due=False)
        self._undelivered.done(key, through)

    async def _look_again(self, account: Account) -> None:
        """After parking: the cache may be behind a registration on another replica (which found
        nothing to deliver if it looked before the park was written), so ask the database."""
        puppet = await self._puppets.fresh(account.key)
        if puppet is not None and puppet.live and self._serving(account):
            await self._puppet_back(account)

    async def _puppet_back(self, account: Account, mailbox: Mailbox | None = None) -> None:
        if mailbox is None:
            mailbox = await self._store.get(account.key)
        if not self._serving(account):
            return
        if mailbox is not None:
            account.take_in(mailbox)
        account.attempts = 0
        account.backoff_until = 0.0
        if account.state in (State.WAITING, State.BACKING_OFF):
            account.apply(Event.PUPPET_BACK)
        elif account.state is State.IDLE and account.has_work:
            account.apply(Event.WORK)
        self._kick(account)

    async def _hand_over_lease(self, account: Account, to: str | None) -> None:
        """The puppet's socket is open to replica ``to``, not here: put the account's work into its
        mailbox, due now, then release the lease (by epoch), so that replica's sweep takes it."""
        key = account.key
        newest, through = account.newest, self._undelivered.newest(key)
        account.apply(Event.SOCKET_ELSEWHERE)
        del self._accounts[key]
        self._handed_over[key] = self._monotonic()
        self._handed_over.move_to_end(key)
        while len(self._handed_over) > HANDED_OVER_KEPT:
            self._handed_over.popitem(last=False)
        log.debug("handing %s over to %s, which holds its puppet's socket", key, to)
        if newest is not None:
            await self._store.bump(key, newest, due=True)
        self._undelivered.done(key, through)
        await self._store.record_delivered(_marks([account]))
        await self._store.release({key: account.epoch}, self.config.owner)
        await self._record("handed_over")

    def _left_to_socket_replica(self, key: str) -> bool:
        """``key`` was handed over to the replica holding its socket less than ``idle_release`` ago:
        the sweep leaves its due mailbox to that replica (after that, a delivery attempt looks again)."""
        since = self._handed_over.get(key)
        if since is None:
            return False
        if self._monotonic() - since < self.config.idle_release:
            return True
        del self._handed_over[key]
        return False

    async def _hand_over(self, key: str) -> None:
        """Put what is undelivered here for ``key`` into its mailbox, due now, for whoever serves it."""
        newest = self._undelivered.newest(key)
        if newest is not None:
            await self._store.bump(key, newest, due=True)
            self._undelivered.done(key, newest)

    async def _refused(
        self, account: Account, latest: Latest, seq: int, through: Latest | None, error: str
    ) -> None:
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
            account.apply(Event.GAVE_UP)
            await self._store.dead_letter(account.key, seq, account.delivered, latest.arrival, error)
            self._undelivered.done(account.key, through)
            account.delivered = account.flushed = max(account.delivered, latest.arrival)
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
        account.not_delivered(latest)
        account.apply(Event.REFUSED)
        newest, through = account.newest or latest, self._undelivered.newest(account.key)
        account.handed_over()
        account.mailbox_due = True
        await self._store.failed(account.key, newest, account.attempts, account.backoff_until, error)
        self._undelivered.done(account.key, through)
        await self._record("failed")

    # -- leases and liveness ----------------------------------------------------------------
    async def _flush_delivered(self, limit: int | None = None) -> None:
        """Write how far delivery got for held accounts that advanced since their last flush, the
        ``limit`` longest-unflushed first, in one batch."""
        candidates = sorted(
            (account for account in self._accounts.values() if account.delivered > account.flushed),
            key=lambda account: account.flushed_at,
        )[:limit]
        await self._store.record_delivered(_marks(candidates))
        now = self._monotonic()
        for account in candidates:
            account.flushed = account.delivered
            account.flushed_at = now

    async def release_idle(self) -> None:
        """Release the leases of accounts idle for ``idle_release`` (their work, if any, is in their
        mailbox), recording their delivery progress first. The accounts stop being served here before
        the first write: work arriving meanwhile takes the lease again (a new epoch, which this
        release then leaves alone)."""
        now = self._monotonic()
        idle = [
            account
            for account in self._accounts.values()
            if account.state in (State.IDLE, State.BACKING_OFF, State.WAITING)
            and not account.dirty
            and not self._undelivered.has(account.key)
            and now - account.last_active > self.config.idle_release
        ]
        for account in idle:
            account.apply(Event.IDLE_TIMEOUT)
            del self._accounts[account.key]
        if idle:
            await self._store.record_delivered(_marks(idle))
            await self._store.release({account.key: account.epoch for account in idle}, self.config.owner)

    async def lost_all_leases(self) -> None:
        """This replica was taken over as dead and its leases ended: cancel the deliveries in flight
        (they are not recorded), stop serving what it held, and hand what is undelivered here to
        whoever serves those accounts now (through their mailboxes)."""
        accounts, self._accounts = self._accounts, {}
        if accounts:
            log.warning("this replica was taken over as dead; dropping %d leases", len(accounts))
        running = [account.task for account in accounts.values() if account.task and not account.task.done()]
        for account in accounts.values():
            account.apply(Event.LEASE_LOST)
        await stop_tasks(running)
        for key in accounts:
            await self._hand_over(key)

    async def probe_offline(self) -> int:
        """Probe offline puppets whose time has come; flow the queues of the ones that answer."""
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
                # not if another replica holds its socket: only that one can tell
                await self._puppets.mark_offline(
                    puppet.key, self._clock() + delay, failures + 1, by=self.config.owner
                )
        return revived

    async def back_online(self, key: str) -> None:
        """A puppet registered, sent a heartbeat or answered a probe (and is marked online): flow its
        queue at once, as one delivery of the newest."""
        pending = await self._store.unpark([key])
        await self.recheck(key, pending.get(key))

    def delivered_through(self, key: str) -> str:
        """How far delivery got for ``key`` as this process knows it (the mailbox may lag behind)."""
        account = self._accounts.get(key)
        return account.delivered if account is not None else ""

    def state_of(self, key: str) -> State:
        account = self._accounts.get(key)
        return account.state if account is not None else State.RELEASED

    @property
    def held(self) -> int:
        return sum(account.state in HELD for account in self._accounts.values())


def _marks(accounts: Any) -> dict[str, str]:
    return {account.key: account.delivered for account in accounts if account.delivered > account.flushed}
