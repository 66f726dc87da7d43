"""Durable per-account queues, coalesced: one mailbox document per kf account plus an event log.

A puppet answers any ``kf_msg_or_event`` by pulling *everything* new with ``kf/sync_msg``, so the
only thing worth delivering is the newest callback. Each account's mailbox keeps that newest callback
(``latest``) and how far delivery got (``delivered``, an arrival key compared as a string). A burst,
or a backlog after an outage, becomes one delivery.

``due_at`` is set while there is something to deliver and the account is not backing off or parked;
the sweep query (``due_at <= now``) therefore only ever matches accounts with due work. Every hot-path
write goes through :class:`~wxkf.group_commit.GroupCommit`, so they share fsyncs.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING, UpdateOne
from pymongo.errors import DuplicateKeyError

from wxkf import paging, retention
from wxkf.database import Database, chunks, durable, up_to
from wxkf.group_commit import GroupCommit

MAILBOXES = "mailboxes"
EVENTS = "manager_events"

DECRYPTED = "decrypted"
RAW = "raw"


def account_key(corp_id: str, open_kfid: str) -> str:
    return f"{corp_id}/{open_kfid}"


def arrival_key(now: float, event_id: str) -> str:
    """Sortable and unique: nanosecond wall clock, then the event id."""
    return arrival_key_ns(int(now * 1e9), event_id)


def arrival_key_ns(ns: int, event_id: str) -> str:
    return f"{ns:020d}-{event_id}"


@dataclass(frozen=True, slots=True)
class Latest:
    """What a delivery carries: the newest callback of an account."""

    event_id: str
    arrival: str
    mode: str  # DECRYPTED ({token, openKfId}) or RAW (the original encrypted XML and query)
    token: str | None = field(default=None, repr=False)
    body: str | None = field(default=None, repr=False)
    query: str | None = field(default=None, repr=False)

    def to_doc(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "arrival": self.arrival,
            "mode": self.mode,
            "token": self.token,
            "body": self.body,
            "query": self.query,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Latest:
        return cls(
            event_id=doc["event_id"],
            arrival=doc["arrival"],
            mode=doc.get("mode", DECRYPTED),
            token=doc.get("token"),
            body=doc.get("body"),
            query=doc.get("query"),
        )


@dataclass(frozen=True, slots=True)
class Mailbox:
    key: str
    corp_id: str
    open_kfid: str
    latest: Latest | None
    delivered: str
    attempts: int
    backoff_until: float
    due_at: float | None
    lease_owner: str | None
    lease_until: float
    last_error: str | None

    @property
    def has_work(self) -> bool:
        return self.latest is not None and self.latest.arrival > self.delivered

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Mailbox:
        latest = doc.get("latest")
        return cls(
            key=doc["_id"],
            corp_id=doc["corp_id"],
            open_kfid=doc["open_kfid"],
            latest=Latest.from_doc(latest) if latest else None,
            delivered=doc.get("delivered", ""),
            attempts=int(doc.get("attempts", 0)),
            backoff_until=float(doc.get("backoff_until", 0.0)),
            due_at=doc.get("due_at"),
            lease_owner=doc.get("lease_owner"),
            lease_until=float(doc.get("lease_until", 0.0)),
            last_error=doc.get("last_error"),
        )


class MailboxStore:
    def __init__(
        self,
        db: Database,
        *,
        owner: str = "",
        clock: Callable[[], float] = time.time,
        keep_for: float = 7 * 86400.0,
    ) -> None:
        self._owner = owner
        self._mailboxes = durable(db[MAILBOXES])
        self._events = durable(db[EVENTS])
        self._clock = clock
        self._keep_for = keep_for
        self._event_writes = GroupCommit(self._events)
        self._mailbox_writes = GroupCommit(self._mailboxes)

    async def ensure_indexes(self) -> None:
        await self._mailboxes.create_index([("due_at", ASCENDING)])
        await self._mailboxes.create_index([("lease_owner", ASCENDING)])
        await self._events.create_index([("account", ASCENDING), ("arrival", ASCENDING)])
        # One index for recovery (arrivals since a checkpoint) and retention (arrivals before a
        # cutoff): each secondary index costs SecantusDB time on every intake insert.
        await self._events.create_index([("arrival", ASCENDING)])
        if retention.INDEX_NAME in await self._events.index_information():
            await self._events.drop_index(retention.INDEX_NAME)  # expire_at, from earlier versions

    async def purge_expired(self) -> int:
        """Delete logged events past retention (see :mod:`wxkf.retention`), oldest arrivals first."""
        cutoff = arrival_key(self._clock() - self._keep_for, "")
        return await retention.purge_before(self._events, "arrival", cutoff)

    # -- intake -----------------------------------------------------------------------------
    async def log(self, corp_id: str, open_kfid: str, latest: Latest) -> bool:
        """Only log the event (durable when this returns); False if its id was logged before.

        For accounts whose puppet is live: the accepting process delivers from memory and owes the
        delivery until then (:mod:`manager.ledger`), so the mailbox is not touched.
        """
        return await self._event_writes.insert(self._event_doc(corp_id, open_kfid, latest))

    async def accept(self, corp_id: str, open_kfid: str, latest: Latest, *, parked: bool) -> bool:
        """Log the event and make it the account's newest; durable when this returns.

        ``parked`` (no live puppet) stores without making the mailbox due; registration or a
        heartbeat un-parks it. Returns False if the event id was already logged (the mailbox is
        still bumped: a crash between the two writes must not strand an event).
        """
        logged = self._event_writes.insert(self._event_doc(corp_id, open_kfid, latest))
        bumped = self.bump(account_key(corp_id, open_kfid), latest, due=not parked)
        # Both writes in the same group-commit round: neither depends on the other, and either
        # order of completion is safe (a caller that sees an error does not acknowledge, and a
        # retried callback bumps the mailbox again).
        new, _ = await asyncio.gather(logged, bumped)
        return new

    def _event_doc(self, corp_id: str, open_kfid: str, latest: Latest) -> dict[str, Any]:
        now = self._clock()
        return {
            "_id": latest.event_id,
            "account": account_key(corp_id, open_kfid),
            "corp_id": corp_id,
            "open_kfid": open_kfid,
            "replica": self._owner,
            "received_at": now,
            **latest.to_doc(),
        }

    async def bump(self, key: str, latest: Latest, *, due: bool) -> None:
        """Make ``latest`` the mailbox's newest unless it holds a newer one; ``due``: deliver it now
        (unless a backoff already made it due later; then due_at == backoff_until)."""
        corp_id, _, open_kfid = key.partition("/")
        # Only a newer event replaces ``latest``. When the stored one is newer the filter misses and
        # the upsert's insert hits the existing _id: a duplicate-key "no" that leaves it alone. Plain
        # operators rather than an aggregation pipeline: SecantusDB validates a pipeline's
        # ``$literal`` (the whole event) on every write, which was a sixth of its time.
        update: dict[str, Any] = {
            "$set": {"corp_id": corp_id, "open_kfid": open_kfid, "latest": latest.to_doc()},
            "$setOnInsert": {"delivered": ""},
        }
        if due:
            update["$max"] = {"due_at": self._clock()}
        await self._mailbox_writes.write(
            UpdateOne({"_id": key, "latest.arrival": {"$not": {"$gte": latest.arrival}}}, update, upsert=True)
        )

    async def owed_by(self, replica: str, since: str) -> dict[str, Latest]:
        """The newest event per account that ``replica`` logged from arrival ``since`` on (recovery).

        Scans every replica's events since then (a checkpoint is at most seconds old) and keeps
        ``replica``'s, so the log needs no index of its own for this."""
        newest: dict[str, Latest] = {}
        cursor = self._events.find({"arrival": {"$gte": since}}, projection={"received_at": 0})
        async for doc in cursor:
            if doc.get("replica") != replica:
                continue
            latest = Latest.from_doc(doc)
            known = newest.get(doc["account"])
            if known is None or latest.arrival > known.arrival:
                newest[doc["account"]] = latest
        return newest

    # -- leases -----------------------------------------------------------------------------
    async def lease(self, key: str, owner: str) -> Mailbox | None:
        """Take (or keep) an account's lease, creating its mailbox if there is none yet; returns the
        mailbox, or None if another process holds it.

        A lease lasts until it is released or its holder is taken over as dead
        (:mod:`manager.recovery` ends its leases): no renewal, so holding 10,000 accounts costs no
        periodic write per account.
        """
        now = self._clock()
        corp_id, _, open_kfid = key.partition("/")
        take = {
            "$set": {"lease_owner": owner, "lease_until": math.inf},
            "$setOnInsert": {"corp_id": corp_id, "open_kfid": open_kfid, "delivered": ""},
        }
        # Point updates, not one with ``$or`` or a findAndModify: SecantusDB scans the whole
        # collection for either (wxkf.database). The common case first: a free lease, or no mailbox.
        try:
            taken = await self._mailboxes.update_one(
                {"_id": key, "lease_until": {"$not": {"$gt": now}}}, take, upsert=True
            )
        except DuplicateKeyError:  # it exists and a lease is current: ours (after a restart), or not
            kept = await self._mailboxes.update_one({"_id": key, "lease_owner": owner}, take)
            if not kept.matched_count:
                return None
        else:
            if taken.upserted_id is not None:  # a new mailbox: nothing to read
                return Mailbox.from_doc({"_id": key, "corp_id": corp_id, "open_kfid": open_kfid})
        doc = await self._mailboxes.find_one({"_id": key})
        return Mailbox.from_doc(doc) if doc and doc.get("lease_owner") == owner else None

    async def release(self, keys: list[str], owner: str) -> None:
        """Give up leases (record how far delivery got first: :meth:`record_delivered`)."""
        for some in chunks(keys):
            await self._mailboxes.update_many(
                {"_id": {"$in": some}, "lease_owner": owner},
                {"$set": {"lease_owner": None, "lease_until": 0.0}},
            )

    async def expire_leases(self, owner: str) -> None:
        """End a dead process's leases now (indexed on ``lease_owner``)."""
        await self._mailboxes.update_many({"lease_owner": owner}, {"$set": {"lease_until": 0.0}})

    async def get(self, key: str) -> Mailbox | None:
        doc = await self._mailboxes.find_one({"_id": key})
        return Mailbox.from_doc(doc) if doc else None

    async def due(self, owner: str, limit: int = 200) -> list[Mailbox]:
        """Mailboxes with due work whose lease is free, expired or ours (indexed on ``due_at``)."""
        now = self._clock()
        cursor = self._mailboxes.find({"due_at": up_to(now)}, limit=limit)
        return [
            Mailbox.from_doc(doc)
            async for doc in cursor
            if doc.get("lease_owner") in (None, owner) or float(doc.get("lease_until", 0.0)) <= now
        ]

    # -- outcomes (all batched) -------------------------------------------------------------
    async def delivered(self, key: str, owner: str, arrival: str) -> None:
        """Record a successful delivery up to ``arrival``; stays due if something newer came in."""
        recorded = self._mailbox_writes.write(
            UpdateOne(
                {"_id": key},
                {
                    "$max": {"delivered": arrival},
                    "$set": {
                        "attempts": 0,
                        "backoff_until": 0.0,
                        "last_error": None,
                        "delivered_at": self._clock(),
                    },
                },
            )
        )
        settled = self._mailbox_writes.write(
            UpdateOne({"_id": key, "latest.arrival": {"$not": {"$gt": arrival}}}, {"$set": {"due_at": None}})
        )
        await asyncio.gather(recorded, settled)

    async def record_delivered(self, marks: Mapping[str, str]) -> None:
        """How far delivery got per account, written lazily (one batch): the puppet already has the
        events, so a crash before this write costs at most one repeated delivery of the newest."""
        now = self._clock()
        await asyncio.gather(
            *(
                self._mailbox_writes.write(
                    UpdateOne({"_id": key}, {"$max": {"delivered": arrival}, "$set": {"delivered_at": now}})
                )
                for key, arrival in marks.items()
            )
        )

    async def failed(self, key: str, latest: Latest, attempts: int, backoff_until: float, error: str) -> None:
        """A delivery of ``latest`` failed: keep it in the mailbox, due again at ``backoff_until``."""
        await asyncio.gather(
            self.bump(key, latest, due=False),
            self._mailbox_writes.write(
                UpdateOne(
                    {"_id": key},
                    {
                        "$set": {
                            "attempts": attempts,
                            "backoff_until": backoff_until,
                            "due_at": backoff_until,
                            "last_error": error[:500],
                        }
                    },
                )
            ),
        )

    async def dead_letter(self, key: str, after: str, arrival: str, error: str) -> None:
        """Give up on events after ``after`` up to ``arrival``; they stay in the log, marked, for replay."""
        now = self._clock()
        await self._mailbox_writes.write(
            UpdateOne(
                {"_id": key},
                [
                    {
                        "$set": {
                            "delivered": {"$max": [{"$ifNull": ["$delivered", ""]}, arrival]},
                            "dead_through": arrival,
                            "attempts": 0,
                            "backoff_until": 0.0,
                            "last_error": error[:500],
                            "due_at": {
                                "$cond": [{"$gt": [{"$ifNull": ["$latest.arrival", ""]}, arrival]}, now, None]
                            },
                        }
                    }
                ],
            )
        )
        await self._events.update_many(
            {"account": key, "arrival": {"$gt": after, "$lte": arrival}},
            {"$set": {"dead": True, "dead_at": now, "error": error[:500]}},
        )

    async def park(self, key: str, latest: Latest | None = None) -> None:
        """No live puppet: keep the work (``latest`` too, if newer than the mailbox's), stop the sweep
        from matching it."""
        parked = self._mailbox_writes.write(UpdateOne({"_id": key}, {"$set": {"due_at": None}}))
        if latest is None:
            await parked
        else:
            await asyncio.gather(self.bump(key, latest, due=False), parked)

    async def unpark(self, keys: list[str]) -> None:
        """A puppet is (back) online: make its pending work due now, ignoring any backoff."""
        if not keys:
            return
        # Read, then update by id: a ``$expr`` comparing two fields makes SecantusDB scan everything.
        projection = {"latest.arrival": 1, "delivered": 1}
        cursor = self._mailboxes.find({"_id": {"$in": keys}}, projection=projection)
        pending = [
            doc["_id"]
            async for doc in cursor
            if (doc.get("latest") or {}).get("arrival", "") > doc.get("delivered", "")
        ]
        if pending:
            await self._mailboxes.update_many(
                {"_id": {"$in": pending}}, {"$set": {"due_at": self._clock(), "backoff_until": 0.0}}
            )

    # -- replay and inspection --------------------------------------------------------------
    async def event(self, event_id: str) -> dict[str, Any] | None:
        return await self._events.find_one({"_id": event_id})

    async def events(self, key: str, after: str = "", limit: int = 1000) -> list[dict[str, Any]]:
        """The oldest ``limit`` events of an account whose arrival key is above ``after`` (one page)."""
        query = {"account": key, "arrival": paging.after(after)}
        cursor = self._events.find(query, limit=limit).sort("arrival", ASCENDING)
        return [doc async for doc in cursor]

    async def newest_since(self, key: str, since_arrival: str) -> tuple[int, dict[str, Any] | None]:
        """How many events an account has from ``since_arrival`` on, and the newest of them."""
        query = {"account": key, "arrival": {"$gte": since_arrival}}
        count = await self._events.count_documents(query)
        newest = await self._events.find_one(query, sort=[("arrival", -1)])
        return count, newest

    async def requeue(self, key: str, event: Mapping[str, Any]) -> Latest:
        """Replay: the logged ``event`` arrives again (a fresh arrival key), so it is delivered anew."""
        old = Latest.from_doc(event)
        latest = Latest(
            old.event_id, arrival_key(self._clock(), old.event_id), old.mode, old.token, old.body, old.query
        )
        await self._mailboxes.update_one(
            {"_id": key},
            {
                "$set": {
                    "latest": latest.to_doc(),
                    "due_at": self._clock(),
                    "attempts": 0,
                    "backoff_until": 0.0,
                }
            },
        )
        await self._events.update_one({"_id": old.event_id}, {"$unset": {"dead": ""}})
        return latest

    async def accounts(self, limit: int = 1000) -> list[Mailbox]:
        return [Mailbox.from_doc(doc) async for doc in self._mailboxes.find({}, limit=limit)]
