"""The durable inbox: every accepted callback is written here before WeCom gets its 200.

A document records the decrypted event, where it must be forwarded (``targets``) and how far each
forward got. ``owner`` is the replica responsible for forwarding it; ``state`` leaves ``pending`` once
every target is done (or dead-lettered). The only queries are by ``_id`` and by ``(owner, state)``,
run once at start-up and when a dead replica's work is taken over, never in a loop over the backlog.

A target that gave up on an event (a permanent refusal, or a subscription past its retry schedule) is
recorded in ``gateway_dead_letters`` too, one small document per event keyed by its id, with ``key``
(time of dead-lettering, then the id) to list them in order without scanning the inbox. A replay puts
the event's dead targets back to pending and removes that record.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from pymongo import ASCENDING

from gateway.intake import CallbackEvent
from wxkf import paging, retention
from wxkf.database import Database, chunks, durable, up_to
from wxkf.group_commit import GroupCommit

COLLECTION = "inbox"
REPLICAS = "gateway_replicas"
DEAD_LETTERS = "gateway_dead_letters"

PENDING = "pending"
DONE = "done"
DEAD = "dead"
UNROUTED = "unrouted"
DEFAULT_RETENTION = 7 * 86400.0


def new_document(
    event: CallbackEvent, targets: Iterable[str], owner: str, now: float, keep_for: float = DEFAULT_RETENTION
) -> dict[str, Any]:
    target_list = list(targets)
    doc: dict[str, Any] = {
        "_id": event.id,
        "corp_id": event.corp_id,
        "app": event.app,
        "event_type": event.event_type,
        "open_kf_id": event.open_kf_id,
        "token": event.token,
        "fields": event.fields,
        "body": event.body,
        "query": event.query,
        "received_at": now,
        "owner": owner,
        "state": PENDING if target_list else UNROUTED,
        "targets": {target: {"state": PENDING, "attempts": 0} for target in target_list},
    }
    if not target_list:  # nothing to do: it is finished the moment it is stored
        doc["expire_at"] = retention.expiry(now, keep_for)
    return doc


class Inbox:
    def __init__(
        self,
        db: Database,
        owner: str,
        *,
        clock: Callable[[], float] = time.time,
        keep_for: float = DEFAULT_RETENTION,
    ) -> None:
        self._collection = durable(db[COLLECTION])
        self._replicas = db[REPLICAS]
        self._dead_letters = durable(db[DEAD_LETTERS])
        self.owner = owner
        self._clock = clock
        self._writer = GroupCommit(self._collection)
        self.keep_for = keep_for

    async def ensure_indexes(self) -> None:
        await self._collection.create_index([("owner", ASCENDING), ("state", ASCENDING)])
        await retention.ensure_expiry_index(self._collection)
        await self._dead_letters.create_index([("key", ASCENDING)], unique=True)
        await retention.ensure_expiry_index(self._dead_letters)

    async def purge_expired(self) -> int:
        """Delete finished events past retention (see :mod:`wxkf.retention`), and their dead letters."""
        now = self._clock()
        return await retention.purge_expired(self._collection, now) + await retention.purge_expired(
            self._dead_letters, now
        )

    async def store(self, doc: dict[str, Any]) -> bool:
        """Persist durably (group-committed). False if this event id was already stored (a retry)."""
        return await self._writer.insert(doc)

    async def unsure(self, older_than: float) -> list[dict[str, Any]]:
        """This replica's unfinished documents whose store raised (WeCom got a 503) at least
        ``older_than`` seconds ago yet are on disk (a missed write concern that was not rolled back):
        nobody has queued them. Each failed store is looked at once."""
        found = []
        for event_id in self._writer.unsure(older_than):
            doc = await self.get(event_id)
            self._writer.forget(event_id)
            if doc is not None and doc["state"] == PENDING and doc["owner"] == self.owner:
                found.append(doc)
        return found

    async def get(self, event_id: str) -> dict[str, Any] | None:
        return await self._collection.find_one({"_id": event_id})

    async def finish(self, event_ids: list[str], state: str = DONE) -> None:
        """Mark events finished; they are purged ``keep_for`` seconds later."""
        now = self._clock()
        for some in chunks(event_ids):
            await self._collection.update_many(
                {"_id": {"$in": some}},
                {
                    "$set": {
                        "state": state,
                        "finished_at": now,
                        "expire_at": retention.expiry(now, self.keep_for),
                    }
                },
            )

    async def record_attempt(self, event_id: str, target: str, attempts: int, error: str) -> None:
        await self._collection.update_one(
            {"_id": event_id},
            {"$set": {f"targets.{target}.attempts": attempts, f"targets.{target}.error": error[:500]}},
        )

    async def dead_letter(self, event_id: str, target: str, error: str) -> None:
        """``target`` gave up on the event (the reason is ``error``): record it where admins look."""
        now = self._clock()
        await self._collection.update_one(
            {"_id": event_id},
            {
                "$set": {
                    f"targets.{target}.state": DEAD,
                    f"targets.{target}.at": now,
                    f"targets.{target}.error": error[:500],
                }
            },
        )
        await self._dead_letters.update_one(
            {"_id": event_id},
            {
                "$set": {
                    f"targets.{target}": error[:500],
                    "at": now,
                    "expire_at": retention.expiry(now, self.keep_for),
                },
                "$setOnInsert": {"key": f"{int(now * 1e9):020d}-{event_id}"},
            },
            upsert=True,
        )

    async def dead_letters(self, after: str = "", limit: int = 100) -> list[dict[str, Any]]:
        """Dead-lettered events in the order they were given up on, from just after ``after`` (a ``key``)."""
        cursor = self._dead_letters.find(
            {"key": paging.after(after)}, projection={"expire_at": 0}, limit=limit
        ).sort("key", ASCENDING)
        return [doc async for doc in cursor]

    async def replay(self, event_id: str) -> dict[str, Any] | None:
        """Put an event's dead-lettered targets back to pending, owned by this replica; returns the
        updated document (to queue), or None if the event has no dead-lettered target."""
        doc = await self.get(event_id)
        if doc is None:
            return None
        dead = [name for name, state in doc.get("targets", {}).items() if state.get("state") == DEAD]
        if not dead:
            return None
        reset: dict[str, Any] = {"state": PENDING, "owner": self.owner}
        for name in dead:
            reset[f"targets.{name}"] = {"state": PENDING, "attempts": 0}
        await self._collection.update_one(
            {"_id": event_id}, {"$set": reset, "$unset": {"expire_at": "", "finished_at": ""}}
        )
        await self._dead_letters.delete_one({"_id": event_id})
        return await self.get(event_id)

    async def pending(self, owner: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """One pass over an owner's unfinished documents, oldest first."""
        cursor = self._collection.find({"owner": owner or self.owner, "state": PENDING}).sort(
            "received_at", ASCENDING
        )
        async for doc in cursor:
            yield doc

    async def claim(self, event_id: str, previous_owner: str) -> dict[str, Any] | None:
        """Take over a dead replica's document; None if someone else claimed it first."""
        # update, then read: SecantusDB runs a findAndModify as a collection scan (wxkf.database)
        claimed = await self._collection.update_one(
            {"_id": event_id, "owner": previous_owner, "state": PENDING}, {"$set": {"owner": self.owner}}
        )
        if not claimed.matched_count:
            return None
        return await self._collection.find_one({"_id": event_id})

    # -- replica liveness -------------------------------------------------------------------
    async def heartbeat(self) -> None:
        await self._replicas.update_one(
            {"_id": self.owner}, {"$set": {"seen_at": self._clock()}}, upsert=True
        )

    async def dead_replicas(self, timeout: float) -> list[str]:
        cutoff = self._clock() - timeout
        cursor = self._replicas.find({"seen_at": up_to(cutoff, inclusive=False), "_id": {"$ne": self.owner}})
        return [doc["_id"] async for doc in cursor]

    async def forget_replica(self, owner: str) -> None:
        await self._replicas.delete_one({"_id": owner})
