"""What a puppet keeps in the database: each account's cursor, every message it pulled, what it sent.

Collections (one set for every account of every puppet process on the database):

| collection | ``_id`` | holds |
|---|---|---|
| ``puppet_accounts`` | ``corp/open_kfid`` | the ``sync_msg`` cursor, the settled mark |
| ``puppet_messages`` | ``corp/open_kfid/msgid`` | each pulled item, the customer, ``failed`` and why |
| ``puppet_handler_log`` | ``start/<key>``, ``end/<key>`` | a message's handler started; it returned |
| ``puppet_sends`` | ``corp/open_kfid/msgid`` | each message sent, its delivery state |
| ``puppet_media`` | ``corp/type/sha256`` | uploaded media ids, for reuse within their 3 days |
| ``puppet_started`` | ``corp/open_kfid/msgid`` | starts written by earlier versions (read at start-up) |

(``<key>`` is the message's ``_id``.) The invariants that make delivery to the bot exactly once:

* a page's items are recorded (inserts by ``_id``, duplicates ignored) *before* the cursor
  past them is stored, both acknowledged durably; a crash in between re-pulls the page and the
  duplicates are recognised;
* before a message's handler is called, its ``start`` entry is durable in the handler log; when the
  handler returns, its ``end`` entry is (a handler that raised or timed out instead updates its message
  to ``failed``, with the error). Both are inserts into one collection: on the embedded server every
  update is a transaction and a synced commit of its own, while a batch of inserts shares one, so a
  customer's next start and the previous end share one commit, and a handler that returns updates
  nothing. A message is ``done`` when its ``end`` entry exists (:meth:`PuppetStore.message` and
  :meth:`PuppetStore.conversation` read it so);
* each message gets a ``seq``, increasing within the process and above the account's stored mark and
  every ``seq`` start-up read (a run whose clock was ahead left higher ones than this clock gives). The
  account's *settled mark* (``settled_below``) says that every message of the account with a lower
  ``seq`` has ended: it is the lowest ``seq`` still unfinished in this process (or past the highest
  recorded), stored at most once a second, and only after the ends it covers are durable. Start-up reads
  the messages from the mark up (one indexed range, ``pending`` being set on every message that did not
  fail), drops those with an ``end`` entry, and hands the rest to the bot again, a customer's oldest
  one marked as a redelivery when its handler had started (a ``start`` entry, an earlier version's
  ``puppet_started`` entry or state ``handling``). So that a slow handler, which holds the mark, does
  not make start-up read everything that ended after it, a message the mark has not passed
  ``SETTLE_AFTER`` seconds after its end is *settled*: updated to ``done``, ``pending`` unset, in
  batches of up to 100 (as is everything above the mark on stopping);
* recorded messages are kept at least as long as WeCom can return them (3 days) so a re-pulled one is
  always recognised: a finished message goes with its ``end`` entry, the retention after its end (a
  failed or settled one carries its own ``expire_at``); ``start`` entries are kept twice the retention.

Queries are by ``_id`` (``$in`` lists of at most 100) or by an index whose prefix is the account
(two-sided ranges), never one of the shapes SecantusDB scans (:mod:`wxkf.database`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from pymongo import ASCENDING, UpdateOne

from wxkf.database import Collection, Database, Document, chunks, durable, up_to
from wxkf.group_commit import GroupCommit
from wxkf.retention import ensure_expiry_index, expiry, purge_expired
from wxkf.tasks import finished_within, stop_tasks

log = logging.getLogger(__name__)

ACCOUNTS = "puppet_accounts"
MESSAGES = "puppet_messages"
HANDLER_LOG = "puppet_handler_log"
SENDS = "puppet_sends"
MEDIA = "puppet_media"
STARTED = "puppet_started"  # earlier versions' start entries (``_id`` the message's key)

#: messages settled by one update, and keys per ``$in`` list (:func:`wxkf.database.chunks`)
SETTLE_BATCH = 100
#: an ended message the account's mark has not passed after this long is settled by an update
SETTLE_AFTER = 5.0
SEQ_MAX = 2**63 - 1


@dataclass
class _Progress:
    """One account's messages in this process, for its settled mark (every message of the account
    with a lower ``seq`` has ended): the lowest unfinished one, or past the highest recorded."""

    open: dict[str, int] = field(default_factory=dict)  # unfinished: key -> seq
    recording: list[int] = field(default_factory=list)  # the first seq of each record() under way
    high: int = 0  # the highest seq recorded or read here
    saved: int = 0  # the mark stored
    ended: list[tuple[str, int | None, float]] = field(default_factory=list)  # above the stored mark
    unhanded: dict[str, set[int]] = field(default_factory=dict)  # key -> seqs of failed records

    def mark(self) -> int:
        """Every message of the account with a lower seq has ended (its end is durable)."""
        lowest = [*self.open.values(), *self.recording]
        if lowest:
            return min(lowest)
        return self.high + 1 if self.high else self.saved

    @property
    def busy(self) -> bool:
        return bool(self.ended) or self.mark() > self.saved


#: the most messages of failed records remembered per account until their page is read again
UNHANDED_LIMIT = 10_000

#: how long WeCom's sync_msg can return a message: dedup must remember at least this long
WECOM_READABLE = 3 * 86400
MIN_RETENTION = WECOM_READABLE + 86400

# message states
NEW, HANDLING, DONE, FAILED = "new", "handling", "done", "failed"
# send states
SENT, SEND_FAILED, NOT_DELIVERED = "sent", "failed", "not_delivered"


@dataclass(frozen=True)
class Pending:
    """An unfinished message found at start-up."""

    item: Document
    redelivery: bool


def message_key(account: str, msgid: str) -> str:
    return f"{account}/{msgid}"


def start_key(key: str) -> str:
    """The handler log's entry for "the handler of message ``key`` was started"."""
    return f"start/{key}"


def end_key(key: str) -> str:
    """The handler log's entry for "the handler of message ``key`` returned"."""
    return f"end/{key}"


class PuppetStore:
    """The puppet's collections on one database. ``retention``: seconds finished records are kept;
    ``settle_interval``: the longest an ended message waits to be settled in a batch of fewer than
    ``SETTLE_BATCH``."""

    def __init__(
        self,
        db: Database,
        *,
        retention: float = 30 * 86400,
        clock: Any = time.time,
        settle_interval: float = 1.0,
    ) -> None:
        self.retention = max(retention, MIN_RETENTION)
        self._clock = clock
        self.accounts: Collection = durable(db[ACCOUNTS])
        self.messages: Collection = durable(db[MESSAGES])
        self.sends: Collection = durable(db[SENDS])
        self.media: Collection = durable(db[MEDIA])
        self.handler_log: Collection = durable(db[HANDLER_LOG])
        self.started: Collection = durable(db[STARTED])
        self._message_writes = GroupCommit(self.messages)
        self._log_writes = GroupCommit(self.handler_log)
        self._progress: dict[str, _Progress] = {}
        self._next_seq = 0
        self._keeper: asyncio.Task[None] | None = None
        self._settle_wake = asyncio.Event()  # settle() was called
        self.settle_interval = settle_interval
        self._cursor_writes = GroupCommit(self.accounts)
        self._send_records = GroupCommit(self.sends)

    async def ensure_indexes(self) -> None:
        await self.messages.create_index(
            [("account", ASCENDING), ("pending", ASCENDING), ("seq", ASCENDING)], name="pending"
        )
        await self.messages.create_index(
            [("account", ASCENDING), ("customer", ASCENDING), ("send_time", ASCENDING)], name="conversation"
        )
        await self.sends.create_index(
            [("account", ASCENDING), ("customer", ASCENDING), ("at", ASCENDING)], name="conversation"
        )
        for collection in (self.messages, self.sends, self.media, self.handler_log, self.started):
            await ensure_expiry_index(collection)

    # -- cursor -----------------------------------------------------------------------------
    async def cursor(self, account: str) -> str | None:
        doc = await self.accounts.find_one({"_id": account}, projection={"cursor": 1})
        return doc.get("cursor") or None if doc else None

    async def save_cursor(self, account: str, cursor: str) -> None:
        update = {"$set": {"cursor": cursor, "updated_at": self._clock()}}
        await self._cursor_writes.write(UpdateOne({"_id": account}, update, upsert=True))

    # -- messages ---------------------------------------------------------------------------
    async def record(self, account: str, items: Sequence[Document]) -> list[Document]:
        """Record a page durably; return the items not seen before, in page order (and those a record
        of this process stored but raised on: they never reached the bot). They count as unfinished
        (the account's settled mark stays below them) until they end."""
        if not items:
            return []
        base = max(time.time_ns(), self._next_seq)  # increasing, even if the clock steps back
        self._next_seq = base + len(items)
        docs = [
            {
                "_id": message_key(account, str(item.get("msgid", ""))),
                "account": account,
                "customer": customer_of(item),
                "send_time": item.get("send_time", 0),
                "seq": base + index,
                "state": NEW,
                "pending": True,
                "item": item,
            }
            for index, item in enumerate(items)
        ]
        progress = self._progress_of(account)
        progress.recording.append(base)
        try:
            # One group commit for every account's pages and state changes: concurrent pulls share a round.
            answers = await asyncio.gather(
                *(self._message_writes.insert(doc) for doc in docs), return_exceptions=True
            )
        except BaseException:  # cancelled: no insert's answer is known
            self._failed_record(progress, docs, [None] * len(docs))
            raise
        finally:
            progress.recording.remove(base)
        failure = next((answer for answer in answers if isinstance(answer, BaseException)), None)
        if failure is not None:
            self._failed_record(progress, docs, answers)
            raise failure
        inserted = [answer is True for answer in answers]
        if progress.unhanded:
            inserted = await self._stored_unhanded(progress, docs, inserted)
        for doc, new in zip(docs, inserted, strict=True):
            if new:
                progress.open.setdefault(doc["_id"], doc["seq"])  # a failed attempt's is its own seq
        progress.high = max(progress.high, docs[-1]["seq"])
        self._keep_soon()
        return [item for item, new in zip(items, inserted, strict=True) if new]

    def _failed_record(
        self, progress: _Progress, docs: Sequence[Document], answers: Sequence[bool | BaseException | None]
    ) -> None:
        """A record raised after storing some of its page, perhaps (an insert that raised may have left
        its document): remember each of its documents not known to be a duplicate with this attempt's
        seq; the retry tells what this attempt stored (new: it never reached the bot) from what was
        there before (a duplicate) by the stored seq. Until then the mark stays below them, and a
        start reads them."""
        for doc, answer in zip(docs, answers, strict=True):
            if answer is False:  # stored before this attempt
                continue
            key = doc["_id"]
            self._message_writes.forget(key)  # its retry is a duplicate; the seq says whose
            if key not in progress.open:
                progress.open[key] = doc["seq"]
            progress.unhanded.setdefault(key, set()).add(doc["seq"])
        while len(progress.unhanded) > UNHANDED_LIMIT:  # the oldest stay open: the next start reads them
            del progress.unhanded[next(iter(progress.unhanded))]

    async def _stored_unhanded(
        self, progress: _Progress, docs: Sequence[Document], inserted: list[bool]
    ) -> list[bool]:
        """``inserted``, with each duplicate that a failed record of this process stored turned new."""
        doubtful = [
            doc["_id"] for doc, new in zip(docs, inserted, strict=True) if doc["_id"] in progress.unhanded
        ]
        stored: dict[str, int] = {}
        for chunk in chunks([key for key in doubtful], SETTLE_BATCH):
            found = self.messages.find({"_id": {"$in": chunk}}, projection={"seq": 1})
            stored.update({doc["_id"]: doc["seq"] async for doc in found})
        answer = list(inserted)
        for index, doc in enumerate(docs):
            key = doc["_id"]
            seqs = progress.unhanded.pop(key, None)
            if seqs is None or answer[index]:
                continue
            if stored.get(key) in seqs:  # the failed attempt's document: never handed to the bot
                answer[index] = True
                progress.open[key] = stored[key]
            elif progress.open.get(key) in seqs:  # there before: not unfinished on our account
                del progress.open[key]
        return answer

    async def pending(self, account: str) -> list[Pending]:
        """The account's unfinished messages, oldest first: those above its settled mark (one indexed
        range) without an ``end`` entry (lookups by ``_id``); done at start-up. A redelivery is a
        customer's *oldest* unfinished message when its handler had started: a customer's next start
        may be durable while the previous end is not (a batch of inserts is not atomic on MongoDB), so
        a crash can leave both started and unfinished; but the next handler is only called once that
        end is durable, so only the oldest can have been cut off, and the one after it was never handed
        to the bot."""
        progress = self._progress_of(account)
        found = await self.accounts.find_one({"_id": account}, projection={"settled_below": 1})
        mark = int(found.get("settled_below") or 0) if found else 0
        progress.saved = max(progress.saved, mark)
        self._next_seq = max(self._next_seq, mark)
        where = {"account": account, "pending": True, "seq": {"$gte": mark, "$lte": SEQ_MAX}}
        cursor = self.messages.find(where, projection={"item": 1, "state": 1, "customer": 1, "seq": 1}).sort(
            "seq", ASCENDING
        )
        docs = [doc async for doc in cursor]
        logged: dict[str, float] = {}  # handler log entry -> its time
        started: set[str] = set()
        for keys in chunks([doc["_id"] for doc in docs], SETTLE_BATCH // 2):
            ids = [start_key(key) for key in keys] + [end_key(key) for key in keys]
            entries = self.handler_log.find({"_id": {"$in": ids}}, projection={"at": 1})
            logged.update({entry["_id"]: entry.get("at", self._clock()) async for entry in entries})
            legacy = self.started.find({"_id": {"$in": list(keys)}}, projection={"_id": 1})
            started.update([entry["_id"] async for entry in legacy])
        pending: list[Pending] = []
        seen: set[str] = set()
        for doc in docs:
            key, seq = doc["_id"], int(doc.get("seq") or 0)
            progress.high = max(progress.high, seq)
            if end_key(key) in logged:  # ended: under the mark once the older ones end, else settled
                progress.ended.append((key, seq, logged[end_key(key)]))
                continue
            progress.open[key] = seq
            customer = doc.get("customer", "")
            was_started = doc.get("state") == HANDLING or key in started or start_key(key) in logged
            cut_off = customer not in seen and was_started
            seen.add(customer)
            pending.append(Pending(doc["item"], cut_off))
        # Above every seq read, not only the mark: a run whose clock was ahead left seqs above it, and
        # what this run records must sort after them (a customer's order at the next start).
        self._next_seq = max(self._next_seq, progress.high + 1)
        self._keep_soon()
        return pending

    async def mark_handling(self, account: str, msgid: str) -> None:
        """Its handler is about to be called: durable before it is (an insert; again for a redelivery,
        then a duplicate, which is as good)."""
        now = self._clock()
        entry = self._log_entry(start_key(message_key(account, msgid)), account, now, 2 * self.retention)
        await self._log_writes.insert(entry)

    async def mark_finished(self, account: str, msgid: str, error: str | None = None) -> None:
        """Its handler returned (``error`` None: an ``end`` entry) or failed (the message is updated to
        ``failed`` with the error); durable on return."""
        key = message_key(account, msgid)
        now = self._clock()
        if error is None:
            await self._log_writes.insert(self._log_entry(end_key(key), account, now, self.retention))
        else:
            fields = {
                "state": FAILED,
                "finished_at": now,
                "expire_at": expiry(now, self.retention),
                "error": error[:2000],
            }
            update = {"$set": fields, "$unset": {"pending": ""}}
            await self._message_writes.write(UpdateOne({"_id": key}, update))
        progress = self._progress_of(account)
        seq = progress.open.pop(key, None)
        if error is None:
            progress.ended.append((key, seq, now))
        self._keep_soon()

    def _log_entry(self, entry_id: str, account: str, now: float, keep_for: float) -> Document:
        return {"_id": entry_id, "account": account, "at": now, "expire_at": expiry(now, keep_for)}

    # -- the settled mark: what start-up need not read ------------------------------------------
    def _progress_of(self, account: str) -> _Progress:
        progress = self._progress.get(account)
        if progress is None:
            progress = self._progress[account] = _Progress()
        return progress

    def _keep_soon(self) -> None:
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.create_task(self._keep(), name="store settled marks")

    async def _keep(self) -> None:
        """Every ``settle_interval`` while there is work: store each account's mark, and settle the
        ended messages it has not passed within ``SETTLE_AFTER``. A failure only delays it."""
        delay = 0.1
        while any(progress.busy for progress in self._progress.values()):
            if not self._settle_wake.is_set():
                await finished_within(self._settle_wake.wait(), self.settle_interval)
            everything = self._settle_wake.is_set()
            self._settle_wake.clear()
            try:
                for account, progress in list(self._progress.items()):
                    await self._keep_account(account, progress, everything)
            except Exception as exc:
                log.warning("storing the settled marks failed (%s); retrying in %.1f s", exc, delay)
                if everything:  # settle() still waits for every ended message, due or not
                    self._settle_wake.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            if everything:
                return

    async def _keep_account(self, account: str, progress: _Progress, everything: bool) -> None:
        mark = progress.mark()
        if mark > progress.saved:
            update = {"$set": {"settled_below": mark}}
            await self._cursor_writes.write(UpdateOne({"_id": account}, update, upsert=True))
            progress.saved = mark
        due = self._clock() - SETTLE_AFTER
        above = [entry for entry in progress.ended if entry[1] is None or entry[1] >= progress.saved]

        def overdue(entry: tuple[str, int | None, float]) -> bool:
            return everything or entry[1] is None or entry[2] <= due

        progress.ended = [entry for entry in above if not overdue(entry)]
        settling = [entry for entry in above if overdue(entry)]
        try:  # behind an older unfinished message: update them, so that start-up need not read them
            for batch in chunks(settling, SETTLE_BATCH):
                ended = min(ended_at for _, _, ended_at in batch)  # kept the retention from its end
                last = max(ended_at for _, _, ended_at in batch)  # none goes before its own retention
                fields = {"state": DONE, "finished_at": ended, "expire_at": expiry(last, self.retention)}
                keys = [key for key, _, _ in batch]
                await self.messages.update_many(
                    {"_id": {"$in": keys}}, {"$set": fields, "$unset": {"pending": ""}}
                )
        except BaseException:
            progress.ended.extend(settling)  # tried again (an update done twice is harmless)
            raise

    async def settle(self, timeout: float = 10.0) -> None:
        """Store every account's mark now and settle every ended message above it (on stopping); give
        up after ``timeout`` s (the database is away: the next start reads a little more)."""
        if not any(progress.busy for progress in self._progress.values()):
            return
        self._settle_wake.set()
        self._keep_soon()
        keeper = self._keeper
        assert keeper is not None
        done, _ = await asyncio.wait({keeper}, timeout=timeout)
        if not done:
            log.warning("the settled marks could not be stored; the next start reads more")
            await stop_tasks([keeper])

    async def _ended(self, docs: Sequence[Document]) -> dict[str, Document]:
        """The handler log's ``end`` entries of those of ``docs`` still unsettled, by message key."""
        keys = [doc["_id"] for doc in docs if doc.get("pending")]
        ended: dict[str, Document] = {}
        for chunk in chunks(keys, SETTLE_BATCH):
            found = self.handler_log.find({"_id": {"$in": [end_key(key) for key in chunk]}})
            ended.update({entry["_id"].removeprefix("end/"): entry async for entry in found})
        return ended

    async def message(self, account: str, msgid: str) -> Document | None:
        """The message's record, ``done`` as soon as its ``end`` entry is durable."""
        doc = await self.messages.find_one({"_id": message_key(account, msgid)})
        if doc is None:
            return None
        return settled(doc, (await self._ended([doc])).get(doc["_id"]))

    # -- sends ------------------------------------------------------------------------------
    async def sent(self, account: str, msgid: str) -> Document | None:
        return await self.sends.find_one({"_id": message_key(account, msgid)})

    async def record_send(
        self,
        account: str,
        customer: str,
        msgid: str,
        msgtype: str,
        body: Document,
        *,
        state: str,
        for_msgid: str | None = None,
        errcode: int | None = None,
    ) -> None:
        now = self._clock()
        fields: dict[str, Any] = {
            "account": account,
            "customer": customer,
            "msgid": msgid,
            "msgtype": msgtype,
            "body": body,
            "state": state,
            "for_msgid": for_msgid,
            "at": now,
            "expire_at": expiry(now, self.retention),
        }
        if errcode is not None:
            fields["errcode"] = errcode
        await self._send_records.write(
            UpdateOne({"_id": message_key(account, msgid)}, {"$set": fields}, upsert=True)
        )

    async def mark_not_delivered(self, account: str, msgid: str, fail_type: int) -> bool:
        """A ``msg_send_fail`` event: the send ``msgid`` did not reach the customer."""
        result = await self.sends.update_one(
            {"_id": message_key(account, msgid)},
            {"$set": {"state": NOT_DELIVERED, "fail_type": fail_type}},
        )
        return result.matched_count > 0

    # -- conversations ----------------------------------------------------------------------
    async def conversation(self, account: str, customer: str, limit: int = 100) -> list[Document]:
        """The customer's last ``limit`` messages and sends, oldest first.

        Each entry: ``{"direction": "in"|"out", "msgid", "msgtype", "at", ...}``; incoming ones carry
        the item and the handling state, outgoing ones the body and delivery state.
        """
        where = {"account": account, "customer": customer}
        received = [doc async for doc in self.messages.find(where).sort("send_time", -1).limit(limit)]
        ended = await self._ended(received)
        incoming = [
            {
                "direction": "in",
                "msgid": doc["item"].get("msgid"),
                "msgtype": doc["item"].get("msgtype"),
                "origin": doc["item"].get("origin"),
                "at": float(doc.get("send_time") or 0),
                "state": doc.get("state"),
                "item": doc["item"],
                "_order": (int(doc.get("send_time") or 0), (doc.get("seq") or 0) / 1e9),
            }
            for doc in (settled(found, ended.get(found["_id"])) for found in received)
        ]
        outgoing = [
            {
                "direction": "out",
                "msgid": doc.get("msgid"),
                "msgtype": doc.get("msgtype"),
                "at": float(doc.get("at") or 0),
                "state": doc.get("state"),
                "body": doc.get("body"),
                "for_msgid": doc.get("for_msgid"),
                "_order": (int(doc.get("at") or 0), float(doc.get("at") or 0)),
            }
            async for doc in self.sends.find(where).sort("at", -1).limit(limit)
        ]
        # WeCom's send_time has whole seconds; within one second our own clock (when an item was
        # recorded, when a send was made) gives the order, so a reply follows what it answers.
        entries = sorted(incoming + outgoing, key=itemgetter("_order"))[-limit:]
        for entry in entries:
            del entry["_order"]
        return entries

    # -- media ------------------------------------------------------------------------------
    async def media_id(self, key: str) -> str | None:
        doc = await self.media.find_one({"_id": key})
        if doc is None or doc.get("usable_until", 0) <= self._clock():
            return None
        media_id = doc.get("media_id")
        return media_id if isinstance(media_id, str) else None

    async def save_media(self, key: str, media_id: str, usable_until: float) -> None:
        await self.media.update_one(
            {"_id": key},
            {
                "$set": {
                    "media_id": media_id,
                    "usable_until": usable_until,
                    "expire_at": expiry(usable_until, 0),
                }
            },
            upsert=True,
        )

    # -- retention --------------------------------------------------------------------------
    async def purge(self) -> int:
        """Delete what has expired: records with an ``expire_at``, and handler log entries, an ``end``
        entry together with its message (first, so that no message outlives its end entry)."""
        now = self._clock()
        total = 0
        for collection in (self.messages, self.sends, self.media, self.started):
            total += await purge_expired(collection, now)
        expired = {"expire_at": up_to(datetime.fromtimestamp(now, tz=UTC), inclusive=False)}
        while True:
            found = self.handler_log.find(expired, projection={"_id": 1}, limit=SETTLE_BATCH)
            ids = [entry["_id"] async for entry in found]
            if not ids:
                return total
            ended = [entry.removeprefix("end/") for entry in ids if entry.startswith("end/")]
            if ended:
                total += (await self.messages.delete_many({"_id": {"$in": ended}})).deleted_count
            total += (await self.handler_log.delete_many({"_id": {"$in": ids}})).deleted_count
            if len(ids) < SETTLE_BATCH:
                return total


def settled(doc: Document, end: Document | None) -> Document:
    """A message's record as it reads once settled, given its handler log ``end`` entry (if any)."""
    if end is None or not doc.get("pending"):
        return doc
    shown = {name: value for name, value in doc.items() if name != "pending"}
    shown.update(state=DONE, finished_at=end.get("at"))
    return shown


def customer_of(item: Document) -> str:
    """The external_userid an item belongs to ("" for account-level events)."""
    if item.get("msgtype") == "event":
        event = item.get("event")
        if isinstance(event, dict):
            return str(event.get("external_userid") or "")
    return str(item.get("external_userid") or "")
