"""Durable per-account queues, coalesced: one mailbox document per kf account plus an event log.

A puppet answers any ``kf_msg_or_event`` by pulling *everything* new with ``kf/sync_msg``, so the
only thing worth delivering is the newest callback. Each account's mailbox keeps that newest callback
(``latest``), a count of the writes that put work in it (``seq``, assigned by the database: no clock
can reorder it) and how many of those a delivery has covered (``delivered_seq``). A burst, or a
backlog after an outage, becomes one delivery. ``delivered`` (the newest arrival key delivered) only
informs the admin view.

``due_at`` is set while there is something to deliver and the account is not backing off or waiting
for its puppet (:data:`DUE_NOW`, or the retry time); the sweep query (``due_at <= now``) therefore
only ever matches accounts with due work. The lease (``lease_owner``; ``lease_life``, the holder's
process life; ``lease_epoch``, +1 per take: the fencing token) says who may deliver. Every hot-path
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

from wxkf import retention
from wxkf.database import Database, chunks, durable, up_to
from wxkf.group_commit import GroupCommit

MAILBOXES = "mailboxes"
EVENTS = "manager_events"

DUE_NOW = 0.0  # due_at for "deliver now": before any clock's now, so no replica waits on another's clock
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
    seq: int = 0
    delivered_seq: int = 0
    lease_epoch: int = 0
    lease_life: str | None = None

    @property
    def has_work(self) -> bool:
        """A write put work here that no delivery has covered yet."""
        return self.latest is not None and self.seq > self.delivered_seq

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
            seq=int(doc.get("seq", 0)),
            delivered_seq=int(doc.get("delivered_seq", 0)),
            lease_epoch=int(doc.get("lease_epoch", 0)),
            lease_life=doc.get("lease_life"),
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
        await self._count_old_work()

    async def _count_old_work(self) -> None:
        """Mailboxes written before work was counted (no ``seq``): pending work (its ``latest`` newer
        than ``delivered``) becomes one uncovered write. Once, at start; later starts match nothing."""
        pending: list[UpdateOne] = []
        async for doc in self._mailboxes.find(
            {"seq": {"$exists": False}}, projection={"latest.arrival": 1, "delivered": 1}
        ):
            arrival = (doc.get("latest") or {}).get("arrival", "")
            seq = 1 if arrival > doc.get("delivered", "") else 0
            pending.append(
                UpdateOne(
                    {"_id": doc["_id"], "seq": {"$exists": False}}, {"$set": {"seq": seq, "delivered_seq": 0}}
                )
            )
        for some in chunks(pending, 500):
            await self._mailboxes.bulk_write(list(some), ordered=False)

    async def purge_expired(self) -> int:
        """Delete logged events past retention (see :mod:`wxkf.retention`), oldest arrivals first."""
        cutoff = arrival_key(self._clock() - self._keep_for, "")
        return await retention.purge_before(self._events, "arrival", cutoff)

    # -- intake -----------------------------------------------------------------------------
    async def log(self, corp_id: str, open_kfid: str, latest: Latest) -> bool:
        """Only log the event (durable when this returns); False if its id was logged before.

        For accounts whose puppet is live: the accepting process delivers from memory and keeps the
        event as undelivered until then (:mod:`manager.account_state`), so the mailbox is not touched.
        """
        return await self._event_writes.insert(self._event_doc(corp_id, open_kfid, latest))

    async def accept(self, corp_id: str, open_kfid: str, latest: Latest, *, parked: bool) -> bool:
        """Log the event and make it the account's newest; durable when this returns.

        ``parked`` (no live puppet) stores without making the mailbox due; registration, a heartbeat
        or a probe that finds the puppet makes it due. Returns False if the event id was already
        logged (the mailbox is still bumped: a crash between the two writes must not strand an event).
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

    async def bump(self, key: str, latest: Latest, *, due: bool, only_if_newer: bool = False) -> None:
        """Put work in the mailbox: ``seq`` + 1, and ``latest`` becomes its newest (the token the next
        delivery carries). The last write wins: it carries the event accepted last, whatever the
        clocks. ``only_if_newer`` (recovery, re-queueing a dead replica's older events): keep a stored
        ``latest`` with a later arrival, and only count the work. ``due``: deliver it now (unless a
        backoff already made it due later; then due_at == backoff_until)."""
        corp_id, _, open_kfid = key.partition("/")
        count: dict[str, Any] = {"$inc": {"seq": 1}}
        if due:
            count["$max"] = {"due_at": DUE_NOW}
        update: dict[str, Any] = {
            **count,
            "$set": {"corp_id": corp_id, "open_kfid": open_kfid, "latest": latest.to_doc()},
            "$setOnInsert": {"delivered": ""},
        }
        if not only_if_newer:
            await self._mailbox_writes.write(UpdateOne({"_id": key}, update, upsert=True))
            return
        # The filter matches unless the stored ``latest`` is newer; then the upsert's insert hits the
        # existing _id, a duplicate-key "no" that leaves it alone, and a second write counts the work.
        # Plain operators rather than an aggregation pipeline: SecantusDB validates a pipeline's
        # ``$literal`` (the whole event) on every write, a sixth of its time.
        older = {"_id": key, "latest.arrival": {"$not": {"$gte": latest.arrival}}}
        if not await self._mailbox_writes.write(UpdateOne(older, update, upsert=True)):
            await self._mailbox_writes.write(UpdateOne({"_id": key}, count))

    async def undelivered_by(self, replica: str, since: str) -> dict[str, Latest]:
        """The newest event per account that ``replica`` logged from arrival ``since`` on (its own key,
        :meth:`manager.account_state.Undelivered.checkpoint`), for recovery.

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
    async def lease(self, key: str, owner: str, life: str = "") -> Mailbox | None:
        """Take (or keep) an account's lease for process ``life`` of replica ``owner``, creating its
        mailbox if there is none yet; returns the mailbox (``lease_epoch`` is the new fencing token),
        or None if another process holds it. Taking it again after a restart (same ``owner``) is a
        new take: a new epoch, and the new life's.

        A lease lasts until it is released or its holder's life is taken over as dead
        (:mod:`manager.recovery` ends that life's leases): no renewal, so holding 10,000 accounts
        costs no periodic write per account.
        """
        now = self._clock()
        corp_id, _, open_kfid = key.partition("/")
        take = {
            "$set": {"lease_owner": owner, "lease_life": life, "lease_until": math.inf},
            "$inc": {"lease_epoch": 1},
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
                return Mailbox.from_doc(
                    {"_id": key, "corp_id": corp_id, "open_kfid": open_kfid, "lease_epoch": 1}
                    | {"lease_owner": owner, "lease_life": life, "lease_until": math.inf}
                )
        doc = await self._mailboxes.find_one({"_id": key})
        if doc and doc.get("lease_owner") == owner and doc.get("lease_life") == life:
            return Mailbox.from_doc(doc)
        return None

    async def release(self, leases: Mapping[str, int], owner: str) -> None:
        """Give up leases, each only if it is still the take of that epoch (``key -> epoch``): a
        lease taken again meanwhile stays. Record how far delivery got first: :meth:`record_delivered`."""
        await asyncio.gather(
            *(
                self._mailbox_writes.write(
                    UpdateOne(
                        {"_id": key, "lease_owner": owner, "lease_epoch": epoch},
                        {"$set": {"lease_owner": None, "lease_life": None, "lease_until": 0.0}},
                    )
                )
                for key, epoch in leases.items()
            )
        )

    async def expire_leases(self, owner: str, life: str | None) -> None:
        """End the leases of a dead process (replica ``owner`` in its ``life``) now; those a restart
        of the same replica took since stay (indexed on ``lease_owner``)."""
        await self._mailboxes.update_many(
            {"lease_owner": owner, "lease_life": life},
            {"$set": {"lease_owner": None, "lease_life": None, "lease_until": 0.0}},
        )

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
    async def delivered(self, key: str, seq: int, arrival: str) -> None:
        """A delivery that started after the mailbox's write number ``seq`` succeeded (carrying the
        event of ``arrival``); the mailbox stays due if a write came in since."""
        recorded = self._mailbox_writes.write(
            UpdateOne(
                {"_id": key},
                {
                    "$max": {"delivered_seq": seq, "delivered": arrival},
                    "$set": {
                        "attempts": 0,
                        "backoff_until": 0.0,
                        "last_error": None,
                        "delivered_at": self._clock(),
                    },
                },
            )
        )
        cleared = self._mailbox_writes.write(UpdateOne({"_id": key, "seq": seq}, {"$set": {"due_at": None}}))
        await asyncio.gather(recorded, cleared)

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

    async def dead_letter(self, key: str, seq: int, after: str, arrival: str, error: str) -> None:
        """Give up on the work up to the mailbox's write ``seq`` (the delivery that failed started
        after it); events logged after arrival ``after`` up to ``arrival`` stay in the log, marked, for
        replay. The mailbox stays due if a write came in since."""
        now = self._clock()
        given_up = {
            "$max": {"delivered_seq": seq, "delivered": arrival},
            "$set": {"dead_through": arrival, "attempts": 0, "backoff_until": 0.0, "last_error": error[:500]},
        }
        await asyncio.gather(
            self._mailbox_writes.write(UpdateOne({"_id": key}, given_up)),
            self._mailbox_writes.write(UpdateOne({"_id": key, "seq": seq}, {"$set": {"due_at": None}})),
            self._mailbox_writes.write(
                UpdateOne({"_id": key, "seq": {"$gt": seq}}, {"$set": {"due_at": DUE_NOW}})
            ),
        )
        await self._events.update_many(
            {"account": key, "arrival": {"$gt": after, "$lte": arrival}},
            {"$set": {"dead": True, "dead_at": now, "error": error[:500]}},
        )

    async def park(self, key: str, latest: Latest) -> None:
        """No live puppet: keep the work (``latest`` too, if newer than the mailbox's), stop the sweep
        from matching it (a puppet seen again makes it due: :meth:`unpark`)."""
        parked = self._mailbox_writes.write(UpdateOne({"_id": key}, {"$set": {"due_at": None}}))
        await asyncio.gather(self.bump(key, latest, due=False), parked)

    async def clear_due(self, key: str, seq: int) -> None:
        """Nothing to deliver: stop the sweep from matching the mailbox, unless a write came in since."""
        await self._mailbox_writes.write(UpdateOne({"_id": key, "seq": seq}, {"$set": {"due_at": None}}))

    async def unpark(self, keys: list[str]) -> dict[str, Mailbox]:
        """A puppet is (back) online: make its pending work due now, ignoring any backoff. Returns the
        mailboxes that have work, as read before."""
        if not keys:
            return {}
        # Read, then update by id: a ``$expr`` comparing two fields makes SecantusDB scan everything.
        pending: dict[str, Mailbox] = {}
        for some in chunks(keys):
            async for doc in self._mailboxes.find({"_id": {"$in": list(some)}}):
                mailbox = Mailbox.from_doc(doc)
                if mailbox.has_work:
                    pending[mailbox.key] = mailbox
        if pending:
            await self._mailboxes.update_many(
                {"_id": {"$in": list(pending)}}, {"$set": {"due_at": DUE_NOW, "backoff_until": 0.0}}
            )
        return pending

    # -- replay and inspection --------------------------------------------------------------
    async def event(self, event_id: str) -> dict[str, Any] | None:
        return await self._events.find_one({"_id": event_id})

    async def events(self, key: str, since_arrival: str = "", limit: int = 1000) -> list[dict[str, Any]]:
        """The oldest ``limit`` events of an account from ``since_arrival`` on."""
        cursor = self._events.find({"account": key, "arrival": {"$gte": since_arrival}}, limit=limit).sort(
            "arrival", ASCENDING
        )
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
                    "due_at": DUE_NOW,
                    "attempts": 0,
                    "backoff_until": 0.0,
                },
                "$inc": {"seq": 1},
            },
        )
        await self._events.update_one({"_id": old.event_id}, {"$unset": {"dead": ""}})
        return latest

    async def accounts(self, limit: int = 1000) -> list[Mailbox]:
        return [Mailbox.from_doc(doc) async for doc in self._mailboxes.find({}, limit=limit)]
