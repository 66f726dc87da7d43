"""The state of one kf account in a manager process: its states, what moves it, and the table of both.

An account this process serves is an :class:`Account` in one :class:`State`; every change of state goes
through :meth:`Account.apply`, which looks the move up in :data:`TRANSITIONS` and refuses any other.
The dispatcher (:mod:`manager.dispatcher`) performs what a move implies (deliver, write the mailbox,
release the lease); this module decides which moves exist. docs/architecture.md shows the same table
(:func:`table_markdown`; a test keeps the two equal).

Two more pieces of per-account state live here, because they decide what an account still has to do:

* :class:`Undelivered`: events this process accepted for a live account and has neither delivered nor
  written to the account's mailbox. For such an account intake writes only the event log (one batched
  insert); only this process knows the event still needs a delivery. Its oldest entry is this process's
  recovery checkpoint (:mod:`manager.recovery`).
* the mailbox document (:mod:`manager.mailbox`), which holds an account's work whenever the database
  alone must say what to deliver (waiting for a puppet, backing off, handed over by another replica).

Ordering never compares two hosts' clocks to decide whether there is work. An account has work when
something was offered to it (accepted here, or a mailbox write it had not seen: the mailbox counts its
writes in ``seq``) since its last delivery started; a delivery that starts after an event was accepted
covers it, since the puppet pulls everything new. Arrival keys (wall clock) only choose which token a
delivery carries: the newest of those offered since the previous delivery started, or the previous
delivery's token again if that one's arrival is later (never an older token after a newer one),
unless that token was first carried more than :data:`TOKEN_REUSE` ago (WeCom's tokens last ten
minutes). A callback accepted by a host whose clock is behind therefore still gets a delivery that
starts after it, with a valid token.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from manager.mailbox import Latest, Mailbox, arrival_key_ns

TOKEN_REUSE = 300.0  # seconds a token may be carried again (WeCom's tokens are valid for 600)


class State(StrEnum):
    ACQUIRING = "acquiring"  # work arrived for an account this process does not serve: taking its lease
    IDLE = "idle"  # lease held, nothing to deliver
    PENDING = "pending"  # lease held, something to deliver, no delivery in flight
    DELIVERING = "delivering"  # one delivery in flight; whatever arrives meanwhile waits for the next
    BACKING_OFF = "backing off"  # the puppet refused (non-2xx): the mailbox holds the work, due at the retry
    WAITING = "waiting for puppet"  # no live puppet: the mailbox holds the work until the puppet is seen
    RELEASED = "released"  # no lease here: another replica serves it, or it was idle


class Event(StrEnum):
    WORK = "new work"  # an event accepted here, or a mailbox write not seen before
    LEASED = "lease taken"
    LEASED_ELSEWHERE = "lease held elsewhere"
    START = "delivery starts"
    NOT_DUE = "retry not due yet"
    DELIVERED = "delivered"
    REFUSED = "refused, retries left"
    GAVE_UP = "refused, no retry left"
    NO_PUPPET = "no live puppet"
    SOCKET_ELSEWHERE = "puppet's socket on another replica"
    FENCED = "cut off (fence ran out, or an error)"
    RETRY_DUE = "retry due"
    PUPPET_BACK = "puppet seen"
    IDLE_TIMEOUT = "idle for idle_release"
    LEASE_LOST = "lease lost"


HELD = (State.IDLE, State.PENDING, State.DELIVERING, State.BACKING_OFF, State.WAITING)

# (state, event) -> (next state, next state if the account has work); one entry per allowed move.
TRANSITIONS: dict[tuple[State, Event], tuple[State, State]] = {
    (State.RELEASED, Event.WORK): (State.ACQUIRING, State.ACQUIRING),
    (State.ACQUIRING, Event.WORK): (State.ACQUIRING, State.ACQUIRING),
    (State.ACQUIRING, Event.LEASED): (State.IDLE, State.PENDING),
    (State.ACQUIRING, Event.LEASED_ELSEWHERE): (State.RELEASED, State.RELEASED),
    (State.ACQUIRING, Event.LEASE_LOST): (State.RELEASED, State.RELEASED),
    (State.IDLE, Event.WORK): (State.PENDING, State.PENDING),
    (State.IDLE, Event.IDLE_TIMEOUT): (State.RELEASED, State.RELEASED),
    (State.PENDING, Event.WORK): (State.PENDING, State.PENDING),
    (State.PENDING, Event.START): (State.DELIVERING, State.DELIVERING),
    (State.PENDING, Event.NOT_DUE): (State.BACKING_OFF, State.BACKING_OFF),
    (State.PENDING, Event.NO_PUPPET): (State.WAITING, State.WAITING),
    (State.DELIVERING, Event.WORK): (State.DELIVERING, State.DELIVERING),
    (State.DELIVERING, Event.DELIVERED): (State.IDLE, State.PENDING),
    (State.DELIVERING, Event.GAVE_UP): (State.IDLE, State.PENDING),
    (State.DELIVERING, Event.REFUSED): (State.BACKING_OFF, State.BACKING_OFF),
    (State.DELIVERING, Event.NO_PUPPET): (State.WAITING, State.WAITING),
    (State.DELIVERING, Event.SOCKET_ELSEWHERE): (State.RELEASED, State.RELEASED),
    (State.DELIVERING, Event.FENCED): (State.PENDING, State.PENDING),
    (State.BACKING_OFF, Event.WORK): (State.BACKING_OFF, State.BACKING_OFF),
    (State.BACKING_OFF, Event.IDLE_TIMEOUT): (State.RELEASED, State.RELEASED),
    (State.BACKING_OFF, Event.RETRY_DUE): (State.IDLE, State.PENDING),
    (State.BACKING_OFF, Event.PUPPET_BACK): (State.IDLE, State.PENDING),
    (State.WAITING, Event.WORK): (State.WAITING, State.WAITING),
    (State.WAITING, Event.IDLE_TIMEOUT): (State.RELEASED, State.RELEASED),
    (State.WAITING, Event.RETRY_DUE): (State.IDLE, State.PENDING),
    (State.WAITING, Event.PUPPET_BACK): (State.IDLE, State.PENDING),
    **{(state, Event.LEASE_LOST): (State.RELEASED, State.RELEASED) for state in HELD},
}

# What the dispatcher does on each move (the docs' table; the code that does it is in the dispatcher).
EFFECTS: dict[tuple[State, Event], str] = {
    (State.RELEASED, Event.WORK): "take the lease (epoch + 1)",
    (State.ACQUIRING, Event.WORK): "kept for after the lease is taken",
    (State.ACQUIRING, Event.LEASED): "take in the mailbox's work, backoff and epoch",
    (State.ACQUIRING, Event.LEASED_ELSEWHERE): "hand over: undelivered events into the mailbox, due now",
    (State.ACQUIRING, Event.LEASE_LOST): "hand over",
    (State.IDLE, Event.WORK): "deliver",
    (State.IDLE, Event.IDLE_TIMEOUT): "record how far delivery got; release the lease (by epoch)",
    (State.PENDING, Event.WORK): "coalesced into the next delivery",
    (State.PENDING, Event.START): "only while the lease is valid (fence)",
    (State.PENDING, Event.NOT_DUE): "work into the mailbox, due at the retry",
    (State.PENDING, Event.NO_PUPPET): "work into the mailbox, not due; then look the puppet up afresh",
    (State.DELIVERING, Event.WORK): "kept for the next delivery",
    (State.DELIVERING, Event.DELIVERED): "events up to the start are done; the mailbox's work too",
    (State.DELIVERING, Event.GAVE_UP): "dead-lettered: events marked in the log, for replay",
    (State.DELIVERING, Event.REFUSED): "work into the mailbox, due at the retry (retry schedule)",
    (State.DELIVERING, Event.NO_PUPPET): "puppet marked offline and probed; work into the mailbox, not due",
    (State.DELIVERING, Event.SOCKET_ELSEWHERE): (
        "hand over, then release the lease (by epoch): the replica holding the socket takes it"
    ),
    (State.DELIVERING, Event.FENCED): "the delivery is cancelled and not recorded; the sweep retries",
    (State.BACKING_OFF, Event.WORK): "into the mailbox, due at the retry",
    (State.BACKING_OFF, Event.IDLE_TIMEOUT): "release the lease; the mailbox keeps the work",
    (State.BACKING_OFF, Event.RETRY_DUE): "take in the mailbox's work",
    (State.BACKING_OFF, Event.PUPPET_BACK): "backoff cleared; take in the mailbox's work",
    (State.WAITING, Event.WORK): "puppet looked up: if live, as puppet seen; else into the mailbox",
    (State.WAITING, Event.IDLE_TIMEOUT): "release the lease; the mailbox keeps the work",
    (State.WAITING, Event.RETRY_DUE): "take in the mailbox's work",
    (State.WAITING, Event.PUPPET_BACK): "take in the mailbox's work: one delivery of the newest",
    **{(state, Event.LEASE_LOST): "delivery in flight cancelled; hand over" for state in HELD},
}


class InvalidTransition(RuntimeError):
    """A move the table does not allow: a bug in the caller, never a condition to handle."""


@dataclass(eq=False)
class Account:
    """One account as this process serves it. Only :meth:`apply` changes ``state``."""

    key: str
    state: State = State.RELEASED
    epoch: int = 0  # the lease's fencing token, as taken by this process
    newest: Latest | None = None  # the newest work offered since the last delivery started
    dirty: bool = False  # something was offered since the last delivery started
    carried: Latest | None = None  # what the last delivery carried
    carried_at: float = 0.0  # monotonic time that token was first carried
    mailbox_seq: int = 0  # the mailbox's writes taken in so far
    mailbox_due: bool = False  # the mailbox may be due: clear it after the next delivery
    attempts: int = 0
    backoff_until: float = 0.0
    delivered: str = ""  # arrival of the newest event delivered (the admin view, dead-letter marks)
    flushed: str = ""  # how far ``delivered`` is written to the mailbox
    flushed_at: float = 0.0
    last_active: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None  # the delivery loop, cancelled when the lease is lost

    @property
    def has_work(self) -> bool:
        return self.dirty and self.newest is not None

    def apply(self, event: Event) -> State:
        """Move to the state the table gives for ``event``; refuses a move the table does not have."""
        targets = TRANSITIONS.get((self.state, event))
        if targets is None:
            raise InvalidTransition(f"{self.key}: {event.value!r} is not allowed when {self.state.value!r}")
        self.state = targets[1] if self.has_work else targets[0]
        return self.state

    def offer(self, latest: Latest | None) -> None:
        """New work: ``latest`` is delivered, or a newer token offered with it (see the module doc)."""
        if latest is None:
            return
        if not self.dirty or self.newest is None or latest.arrival > self.newest.arrival:
            self.newest = latest
        self.dirty = True

    def take_in(self, mailbox: Mailbox) -> None:
        """Learn what the mailbox holds: its work if there is a write not seen yet, its backoff."""
        if mailbox.seq > self.mailbox_seq:
            self.mailbox_seq = mailbox.seq
            if mailbox.has_work:
                self.offer(mailbox.latest)
        if mailbox.has_work:
            self.mailbox_due = True  # its delivery must be recorded there
        self.attempts = mailbox.attempts
        self.backoff_until = mailbox.backoff_until
        self.mailbox_due = self.mailbox_due or mailbox.due_at is not None
        self.delivered = max(self.delivered, mailbox.delivered)
        self.flushed = max(self.flushed, mailbox.delivered)

    def start(self, now: float) -> Latest:
        """A delivery starts, covering everything offered so far; returns the token it carries."""
        assert self.newest is not None
        self.apply(Event.START)
        self.dirty = False
        last = self.carried
        if last is not None and last.arrival > self.newest.arrival and now - self.carried_at < TOKEN_REUSE:
            return last
        if last is None or last.arrival != self.newest.arrival:
            self.carried, self.carried_at = self.newest, now
        return self.newest

    def not_delivered(self, attempted: Latest) -> None:
        """A delivery carrying ``attempted`` failed (the puppet may have seen it all the same): its work
        is still to do, and it goes on with that token unless a later one was offered, never an older
        one (whatever was offered since the start may be older)."""
        self.dirty = True
        if self.newest is None or attempted.arrival > self.newest.arrival:
            self.newest = attempted

    def handed_over(self) -> None:
        """The work now is in the mailbox (waiting, backing off): nothing is left in memory."""
        self.dirty = False


class Undelivered:
    """Events this process accepted and must still deliver (no one else knows them yet).

    Arrival keys are minted here, strictly increasing within the process, so "everything before this
    key is done" is one comparison (:meth:`checkpoint`). They are compared only with each other, never
    with another process's keys.
    """

    def __init__(self) -> None:
        self._last_ns = 0
        self._all: dict[str, str] = {}  # arrival -> account, in minting (= arrival) order
        self._by_account: dict[str, deque[Latest]] = {}

    def mint(self, now: float, event_id: str) -> str:
        """A fresh arrival key, later than every key minted before by this process."""
        self._last_ns = max(int(now * 1e9), self._last_ns + 1)
        return arrival_key_ns(self._last_ns, event_id)

    def add(self, key: str, latest: Latest) -> None:
        """Record an event about to be logged. Call it right after :meth:`mint`, before the write: a
        checkpoint taken while the write is in flight must not pass it."""
        assert latest.arrival > next(reversed(self._all), ""), "add() in minting order"
        self._all[latest.arrival] = key
        self._by_account.setdefault(key, deque()).append(latest)

    def discard(self, key: str, latest: Latest) -> None:
        """The event was logged before (a retry): whoever logged it first delivers it."""
        if self._all.pop(latest.arrival, None) is None:
            return
        events = self._by_account[key]
        events.remove(latest)
        if not events:
            del self._by_account[key]

    def done(self, key: str, through: Latest | None) -> None:
        """``key``'s events up to ``through`` (one of them) were delivered or are in its mailbox."""
        events = self._by_account.get(key)
        if events is None or through is None:
            return
        while events and events[0].arrival <= through.arrival:
            del self._all[events.popleft().arrival]
        if not events:
            del self._by_account[key]

    def has(self, key: str) -> bool:
        return key in self._by_account

    def newest(self, key: str) -> Latest | None:
        events = self._by_account.get(key)
        return events[-1] if events else None

    def accounts(self) -> Iterator[str]:
        """Accounts with undelivered events (a snapshot: safe to change while iterating)."""
        return iter(list(self._by_account))

    def checkpoint(self, now: float) -> str:
        """An arrival key such that every event this process minted before it is done."""
        for arrival in self._all:
            return arrival
        return self.mint(now, "")  # nothing undelivered: "now", so that every later event sorts after it

    def __len__(self) -> int:
        return len(self._all)


def table_markdown() -> str:
    """The transition table as docs/architecture.md shows it (moves alike but for the state, one row)."""
    rows: dict[tuple[str, str, str], list[str]] = {}
    for (state, event), (idle, busy) in TRANSITIONS.items():
        target = idle.value if idle == busy else f"{busy.value} if work is left, else {idle.value}"
        rows.setdefault((event.value, target, EFFECTS[(state, event)]), []).append(state.value)
    lines = ["| state | event | next state | what happens |", "|---|---|---|---|"]
    for (what, target, effect), states in rows.items():
        lines.append(f"| {', '.join(states)} | {what} | {target} | {effect} |")
    return "\n".join(lines)
