"""Finding a dead manager's debts again: its replica checkpoint and the event log after it.

Every second each manager records, in its ``manager_replicas`` document, ``seen_at`` and the arrival
before which everything it accepted is settled (:meth:`manager.ledger.Ledger.settled_before`). What it
owed when it died is therefore in the log from that arrival on (indexed on ``arrival``): usually a
second or two of intake, never the whole backlog.

* A restart under the same replica id recovers its own debts before it serves anything.
* A replica silent for ``timeout`` seconds is claimed by a live one (one atomic point update on its
  document), which recovers its debts, ends its leases (they are not renewed, so nothing else would)
  and deletes the document; a replica without a document owes nothing, so a slow replica that was
  taken over starts afresh with its next checkpoint, and drops the leases it thought it held.

Recovering means putting each account's newest owed event into its mailbox, due now: from there the
normal sweep delivers it, under the account's lease, at least once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pymongo import ASCENDING

from manager.ledger import Ledger
from manager.mailbox import MailboxStore
from wxkf.database import Database, durable, up_to

log = logging.getLogger(__name__)

COLLECTION = "manager_replicas"


class Recovery:
    def __init__(
        self,
        db: Database,
        mailboxes: MailboxStore,
        ledger: Ledger,
        owner: str,
        *,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._replicas = durable(db[COLLECTION])
        self._mailboxes = mailboxes
        self._ledger = ledger
        self._owner = owner
        self._timeout = timeout
        self._clock = clock
        self._started = False

    async def ensure_indexes(self) -> None:
        await self._replicas.create_index([("seen_at", ASCENDING)])

    async def recover_own(self) -> int:
        """At start, before any intake: re-queue what this replica owed when it last stopped."""
        doc = await self._replicas.find_one({"_id": self._owner})
        recovered = await self._recover(self._owner, doc["settled_before"]) if doc else 0
        await self.checkpoint()
        return recovered

    async def checkpoint(self) -> bool:
        """Record that this replica is alive and how far its debts are settled.

        Returns False if another replica took this one over since the last checkpoint (it was too
        slow to write one in time): its leases were ended, and the caller must stop serving them.
        """
        now = self._clock()
        mark = {"seen_at": now, "settled_before": self._ledger.settled_before(now)}
        ours = await self._replicas.update_one(
            {"_id": self._owner, "claimed_by": {"$exists": False}}, {"$set": mark}
        )
        if ours.matched_count:
            return True
        await self._replicas.update_one(
            {"_id": self._owner}, {"$set": mark, "$unset": {"claimed_by": ""}}, upsert=True
        )
        first, self._started = not self._started, True
        return first

    async def take_over_dead(self) -> int:
        """Claim replicas silent for ``timeout`` seconds and re-queue what they owed."""
        recovered = 0
        cutoff = self._clock() - self._timeout
        async for doc in self._replicas.find({"seen_at": up_to(cutoff, inclusive=False)}):
            if doc["_id"] == self._owner:
                continue
            # The claim: only one live replica matches the silent document's exact seen_at.
            claimed = await self._replicas.update_one(
                {"_id": doc["_id"], "seen_at": doc["seen_at"]},
                {"$set": {"seen_at": self._clock(), "claimed_by": self._owner}},
            )
            if not claimed.matched_count:
                continue
            count = await self._recover(doc["_id"], doc["settled_before"])
            await self._mailboxes.expire_leases(doc["_id"])  # dead: its accounts are free at once
            await self._replicas.delete_one({"_id": doc["_id"], "claimed_by": self._owner})
            log.warning("took over manager replica %s: %d accounts had undelivered events", doc["_id"], count)
            recovered += count
        return recovered

    async def _recover(self, replica: str, since: str) -> int:
        owed = await self._mailboxes.owed_by(replica, since)
        for key, latest in owed.items():
            await self._mailboxes.bump(key, latest, due=True)
        if owed:
            log.info("recovered undelivered events of %d accounts from replica %s", len(owed), replica)
        return len(owed)
