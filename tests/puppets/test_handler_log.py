"""The handler log and the settled mark: a handler's start and end are inserts sharing one batch, no
message is updated when its handler returns, and start-up reads only the messages above each account's
settled mark, never handing a finished one to the bot again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from puppets.store import DONE, NEW, PuppetStore, end_key, message_key
from tests.support.kf_items import text_item as text
from wxkf.database import Database

ACCOUNT = "wwcorp/wkone"


async def recorded(db: Database, *items: dict[str, Any]) -> PuppetStore:
    store = PuppetStore(db)
    await store.ensure_indexes()
    assert await store.pending(ACCOUNT) == []
    await store.record(ACCOUNT, list(items))
    return store


async def handled(store: PuppetStore, *msgids: str) -> None:
    for msgid in msgids:
        await store.mark_handling(ACCOUNT, msgid)
        await store.mark_finished(ACCOUNT, msgid)


async def raw(store: PuppetStore, msgid: str) -> dict[str, Any]:
    doc = await store.messages.find_one({"_id": message_key(ACCOUNT, msgid)})
    assert doc is not None
    return doc


async def test_an_end_and_the_next_start_are_one_batch_of_inserts_and_no_message_write(db: Database) -> None:
    """On the embedded server an update is a synced commit of its own: a handler's end updates no
    message, and shares its batch with the customer's next start."""
    store = await recorded(db, text("m1"), text("m2"))
    await store.mark_handling(ACCOUNT, "m1")
    message_writes, log_batches = store._message_writes.operations, store._log_writes.batches
    await asyncio.gather(store.mark_finished(ACCOUNT, "m1"), store.mark_handling(ACCOUNT, "m2"))
    assert store._message_writes.operations == message_writes
    assert store._log_writes.batches == log_batches + 1
    shown = await store.message(ACCOUNT, "m1")
    assert shown is not None and shown["state"] == DONE and "pending" not in shown


async def test_start_up_reads_from_the_settled_mark_and_hands_only_the_unfinished(db: Database) -> None:
    store = await recorded(db, text("m1"), text("m2"), text("m3"))
    await handled(store, "m1", "m2")
    await store.settle()
    m3 = await raw(store, "m3")
    assert (await store.accounts.find_one({"_id": ACCOUNT}) or {})["settled_below"] == m3["seq"]
    assert (await raw(store, "m1"))["state"] == NEW  # never updated: the mark covers it

    after = PuppetStore(db)  # the next start
    assert [(p.item["msgid"], p.redelivery) for p in await after.pending(ACCOUNT)] == [("m3", False)]
    assert (await after.message(ACCOUNT, "m1") or {})["state"] == DONE


async def test_a_message_ended_behind_an_older_unfinished_one_is_settled_by_an_update(db: Database) -> None:
    """The mark cannot pass an unfinished message (wmA's m1, its handler slow): another customer's
    messages that ended after it are updated to done, so that start-up need not read them."""
    store = await recorded(db, text("m1"), text("b1", "wmB"), text("b2", "wmB"))
    await store.mark_handling(ACCOUNT, "m1")
    await handled(store, "b1", "b2")
    await store.settle()
    assert [(await raw(store, msgid))["state"] for msgid in ("m1", "b1", "b2")] == [NEW, DONE, DONE]
    assert "pending" not in await raw(store, "b1")

    after = PuppetStore(db)
    assert [(p.item["msgid"], p.redelivery) for p in await after.pending(ACCOUNT)] == [("m1", True)]


async def test_a_message_whose_end_was_durable_at_a_crash_is_never_handed_again(db: Database) -> None:
    """The process died after m1's end was durable, before any mark was stored, with m2's handler
    started: the next start hands m2 again as a redelivery and m3, not m1."""
    before = await recorded(db, text("m1"), text("m2"), text("m3"))
    await before.mark_handling(ACCOUNT, "m1")
    await before.handler_log.insert_one(
        {"_id": end_key(message_key(ACCOUNT, "m1")), "account": ACCOUNT, "at": 1.0}
    )  # what mark_finished writes, with no mark after it
    await before.mark_handling(ACCOUNT, "m2")
    assert await before.accounts.find_one({"_id": ACCOUNT}) is None

    after = PuppetStore(db)
    pending = await after.pending(ACCOUNT)
    assert [(p.item["msgid"], p.redelivery) for p in pending] == [("m2", True), ("m3", False)]
    await after.settle()
    again = PuppetStore(db)
    assert [p.item["msgid"] for p in await again.pending(ACCOUNT)] == ["m2", "m3"]


async def test_messages_recorded_after_the_clock_stepped_back_stay_above_the_mark(db: Database) -> None:
    """A mark stored by a run whose clock was ahead: what this run records still gets a higher seq,
    so a crash cannot leave it under the mark, unread."""
    ahead = time.time_ns() + 10**15
    await db["puppet_accounts"].insert_one({"_id": ACCOUNT, "settled_below": ahead})
    store = await recorded(db, text("m1"))
    assert (await raw(store, "m1"))["seq"] >= ahead
    after = PuppetStore(db)  # killed: m1 never handled
    assert [p.item["msgid"] for p in await after.pending(ACCOUNT)] == ["m1"]


async def test_a_conversation_shows_an_ended_message_as_done(db: Database) -> None:
    store = await recorded(db, text("m1"), text("m2"))
    await handled(store, "m1")
    states = {entry["msgid"]: entry["state"] for entry in await store.conversation(ACCOUNT, "wmA")}
    assert states == {"m1": DONE, "m2": NEW}
