"""Replicas watching each other: checkpoints, the lease fence, and taking over a dead manager's work.

Every second each manager writes its ``manager_replicas`` document: its process ``life`` (new at every
start), a ``beat`` counter, and ``settled_before``, the arrival key before which everything it accepted
is delivered or in a mailbox (:meth:`manager.account_state.Undelivered.checkpoint`). What it had not
delivered when it died is therefore in the log from that key on (its own keys, minted by one process):
a second or two of intake, never the whole backlog.

* A restart under the same replica id recovers its own undelivered events before it serves anything,
  and starts a new life: a replica taking over the old life ends only the old life's leases.
* A replica is taken over when its document has not changed for ``timeout`` seconds *of the watcher's
  monotonic clock*: no two hosts' wall clocks are compared, so a replica whose clock is behind is not
  mistaken for dead. The claim is one point update on the exact (life, beat) the watcher saw silent;
  the claimant recovers the dead life's events, ends its leases and deletes its document.
* **The fence** (:class:`Liveness`): a replica may use its leases only until ``FENCE`` x ``timeout``
  after the start of its last successful checkpoint, by its own monotonic clock. No one can claim it
  before ``timeout`` has passed since that write, so a replica that was paused, partitioned or slow
  stops delivering before anyone else can start (clocks may be offset, their rates agree to well
  within 1 - ``FENCE``). A checkpoint that finds its life claimed starts a new life; the caller drops
  every lease it held (:meth:`manager.dispatcher.Dispatcher.lost_all_leases`).

Recovering means putting each account's newest undelivered event into its mailbox, due now: from there
the normal sweep delivers it, under the account's lease, at least once.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo import ASCENDING

from manager.account_state import Undelivered
from manager.mailbox import MailboxStore
from wxkf.database import Database, durable

log = logging.getLogger(__name__)

COLLECTION = "manager_replicas"
FENCE = 0.75  # a lease is used for at most this fraction of the replica timeout after a checkpoint


def new_life() -> str:
    return secrets.token_hex(8)


class Liveness:
    """This process's standing among the replicas: its life, and until when its leases are safe."""

    def __init__(self, timeout: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.life = new_life()
        self._guard = FENCE * timeout
        self._monotonic = monotonic
        self._valid_until = -math.inf

    def renewed(self, started_at: float) -> None:
        """A checkpoint that started at monotonic ``started_at`` was written: leases hold a while."""
        self._valid_until = max(self._valid_until, started_at + self._guard)

    def remaining(self) -> float:
        """Seconds the leases may still be used (<= 0: do not deliver, do not write as their holder)."""
        return self._valid_until - self._monotonic()

    def valid(self) -> bool:
        return self.remaining() > 0

    def restart(self) -> None:
        """This life was taken over: every lease taken in it is gone; a new life starts."""
        self.life = new_life()
        self._valid_until = -math.inf


class Recovery:
    def __init__(
        self,
        db: Database,
        mailboxes: MailboxStore,
        undelivered: Undelivered,
        owner: str,
        *,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        on_taken_over: Callable[[str, str | None], Awaitable[object]] | None = None,
    ) -> None:
        self._on_taken_over = on_taken_over  # (replica, life): what else that life held ends too
        self._replicas = durable(db[COLLECTION])
        self._mailboxes = mailboxes
        self._undelivered = undelivered
        self._owner = owner
        self._timeout = timeout
        self._clock = clock
        self._monotonic = monotonic
        self.liveness = Liveness(timeout, monotonic)
        self._written = False  # this life has its document
        self._silence: dict[str, tuple[tuple[Any, ...], float]] = {}  # replica -> (what we saw, since)

    async def ensure_indexes(self) -> None:
        await self._replicas.create_index([("seen_at", ASCENDING)])

    async def recover_own(self) -> int:
        """At start, before any intake: re-queue what this replica had not delivered when it stopped."""
        doc = await self._replicas.find_one({"_id": self._owner})
        recovered = await self._recover(self._owner, doc["settled_before"]) if doc else 0
        await self.checkpoint()
        return recovered

    async def checkpoint(self) -> bool:
        """Record that this replica is alive and how far its events are delivered; renews the fence.

        Returns False if another replica took this life over since the last checkpoint: its leases
        were ended, a new life has started, and the caller must stop serving what it held.
        """
        started = self._monotonic()
        now = self._clock()
        mark = {"seen_at": now, "settled_before": self._undelivered.checkpoint(now)}
        lost = False
        if self._written:
            ours = await self._replicas.update_one(
                {"_id": self._owner, "life": self.liveness.life, "claimed_by": {"$exists": False}},
                {"$set": mark, "$inc": {"beat": 1}},
            )
            if ours.matched_count:
                self.liveness.renewed(started)
                return True
            log.warning("this replica (%s) was taken over as dead; it starts a new life", self._owner)
            self.liveness.restart()
            lost = True
        await self._replicas.replace_one(
            {"_id": self._owner}, {"life": self.liveness.life, "beat": 0, **mark}, upsert=True
        )
        self._written = True
        self.liveness.renewed(started)
        return not lost

    async def take_over_dead(self) -> int:
        """Claim replicas whose document stayed the same for ``timeout`` seconds; recover their work."""
        recovered = 0
        now = self._monotonic()
        present = set()
        async for doc in self._replicas.find({}):
            replica = doc["_id"]
            if replica == self._owner:
                continue
            present.add(replica)
            seen = (doc.get("life"), doc.get("beat"), doc.get("seen_at"), doc.get("claimed_by"))
            silent = self._silence.get(replica)
            if silent is None or silent[0] != seen:
                self._silence[replica] = (seen, now)
                continue
            if now - silent[1] < self._timeout:
                continue
            # The claim: only one watcher matches the exact document it saw silent.
            claimed = await self._replicas.update_one(
                {"_id": replica, "life": doc.get("life"), "beat": doc.get("beat")}
                | {"claimed_by": doc.get("claimed_by")},
                {"$set": {"claimed_by": self._owner}, "$inc": {"beat": 1}},
            )
            if not claimed.matched_count:
                continue
            count = await self._recover(replica, doc["settled_before"])
            await self._mailboxes.expire_leases(replica, doc.get("life"))  # its accounts are free at once
            if self._on_taken_over is not None:
                await self._on_taken_over(replica, doc.get("life"))
            await self._replicas.delete_one(
                {"_id": replica, "life": doc.get("life"), "claimed_by": self._owner}
            )
            log.warning("took over manager replica %s: %d accounts had undelivered events", replica, count)
            recovered += count
        for gone in set(self._silence) - present:
            del self._silence[gone]
        return recovered

    async def _recover(self, replica: str, since: str) -> int:
        undelivered = await self._mailboxes.undelivered_by(replica, since)
        for key, latest in undelivered.items():
            await self._mailboxes.bump(key, latest, due=True, only_if_newer=True)
        if undelivered:
            log.info("recovered undelivered events of %d accounts from replica %s", len(undelivered), replica)
        return len(undelivered)
