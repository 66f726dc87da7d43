"""The puppet store's handling records: what start-up hands to the bot again, and as what."""

from __future__ import annotations

from puppets.store import DONE, FAILED, HANDLING, NEW, PuppetStore
from tests.support.kf_items import text_item as text
from wxkf.database import Database

ACCOUNT = "wwcorp/wkone"


async def store_with(db: Database, *msgids: str) -> PuppetStore:
    store = PuppetStore(db)
    await store.ensure_indexes()
    assert [item["msgid"] for item in await store.record(ACCOUNT, [text(m) for m in msgids])] == list(msgids)
    return store


async def test_a_started_handler_makes_its_unfinished_message_a_redelivery(db: Database) -> None:
    store = await store_with(db, "m1", "m2", "m3")
    await store.mark_handling(ACCOUNT, "m1")
    await store.mark_finished(ACCOUNT, "m1")
    await store.mark_handling(ACCOUNT, "m2")  # cut off here
    pending = await store.pending(ACCOUNT)
    assert [(p.item["msgid"], p.redelivery) for p in pending] == [("m2", True), ("m3", False)]


async def test_a_next_start_durable_before_the_previous_completion_is_no_second_redelivery(
    db: Database,
) -> None:
    """m1's handler returned and m2's start was written, but m1's end (the same batch of inserts,
    which MongoDB does not apply atomically) was not when the process died: m2's handler was never
    called (it waits for that end), so only m1 is handed again as a redelivery; another customer's
    cut-off one is too."""
    store = await store_with(db, "m1", "m2", "m3")
    await store.record(ACCOUNT, [text("b1", customer="wmB")])
    for msgid in ("m1", "m2", "b1"):
        await store.mark_handling(ACCOUNT, msgid)
    pending = await store.pending(ACCOUNT)
    assert [(p.item["msgid"], p.redelivery) for p in pending] == [
        ("m1", True),
        ("m2", False),
        ("m3", False),
        ("b1", True),
    ]


async def test_starting_a_handler_inserts_its_record_and_leaves_the_message_untouched(db: Database) -> None:
    """The start is an insert (batched with others into one synced commit), not an update of the
    message: updates are a synced commit each on the embedded server."""
    store = await store_with(db, "m1")
    before = await store.message(ACCOUNT, "m1")
    await store.mark_handling(ACCOUNT, "m1")
    await store.mark_handling(ACCOUNT, "m1")  # a redelivery starts it again: a duplicate, no error
    assert await store.message(ACCOUNT, "m1") == before
    assert before is not None and before["state"] == NEW
    assert await store.handler_log.count_documents({"_id": f"start/{ACCOUNT}/m1"}) == 1


async def test_completions_are_recorded_on_the_message(db: Database) -> None:
    store = await store_with(db, "m1", "m2")
    for msgid, error in (("m1", None), ("m2", "RuntimeError: broke")):
        await store.mark_handling(ACCOUNT, msgid)
        await store.mark_finished(ACCOUNT, msgid, error)
    one, two = await store.message(ACCOUNT, "m1"), await store.message(ACCOUNT, "m2")
    assert one is not None and one["state"] == DONE and "pending" not in one
    assert two is not None and two["state"] == FAILED and two["error"] == "RuntimeError: broke"
    assert await store.pending(ACCOUNT) == []


async def test_a_message_left_handling_by_an_earlier_version_is_a_redelivery(db: Database) -> None:
    store = await store_with(db, "m1", "m2")
    await store.messages.update_one({"_id": f"{ACCOUNT}/m1"}, {"$set": {"state": HANDLING}})
    pending = await store.pending(ACCOUNT)
    assert [(p.item["msgid"], p.redelivery) for p in pending] == [("m1", True), ("m2", False)]


async def test_start_records_outlive_their_finished_messages(db: Database) -> None:
    store = await store_with(db, "m1")
    await store.mark_handling(ACCOUNT, "m1")
    await store.mark_finished(ACCOUNT, "m1")
    now = store._clock()
    store._clock = lambda: now + store.retention + 60  # type: ignore[method-assign]
    assert await store.purge() == 2  # the message and its end entry
    assert await store.messages.count_documents({}) == 0
    assert await store.handler_log.count_documents({}) == 1
    store._clock = lambda: now + 2 * store.retention + 60  # type: ignore[method-assign]
    assert await store.purge() == 1  # its start entry
