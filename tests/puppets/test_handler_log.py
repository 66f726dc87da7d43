"""The handler log: a handler's start and end are inserts sharing one batch; ended messages are settled
to ``done`` behind the handlers, and a crash before that hands a finished message to no one again."""

from __future__ import annotations

import asyncio
from typing import Any

from puppets.store import DONE, NEW, PuppetStore, end_key, message_key
from wxkf.database import Database

ACCOUNT = "wwcorp/wkone"


def text(msgid: str, customer: str = "wmA") -> dict[str, Any]:
    return {
        "msgid": msgid,
        "open_kfid": "wkone",
        "external_userid": customer,
        "send_time": 1,
        "origin": 3,
        "msgtype": "text",
        "text": {"content": msgid},
    }


async def recorded(db: Database, *msgids: str) -> PuppetStore:
    store = PuppetStore(db)
    await store.ensure_indexes()
    await store.record(ACCOUNT, [text(msgid) for msgid in msgids])
    return store


async def test_an_end_and_the_next_start_are_one_batch_of_inserts_and_no_message_write(db: Database) -> None:
    """On the embedded server an update is a synced commit of its own: a handler's end updates no
    message on the handlers' path, and shares its batch with the customer's next start."""
    store = await recorded(db, "m1", "m2")
    await store.mark_handling(ACCOUNT, "m1")
    message_writes, log_batches = store._message_writes.operations, store._log_writes.batches
    await asyncio.gather(store.mark_finished(ACCOUNT, "m1"), store.mark_handling(ACCOUNT, "m2"))
    assert store._message_writes.operations == message_writes
    assert store._log_writes.batches == log_batches + 1
    shown = await store.message(ACCOUNT, "m1")  # settled or not, it reads as done
    assert shown is not None and shown["state"] == DONE and "pending" not in shown


async def test_settling_makes_ended_messages_done_and_gives_them_their_retention(db: Database) -> None:
    store = await recorded(db, "m1", "m2", "m3")
    for msgid in ("m1", "m2"):
        await store.mark_handling(ACCOUNT, msgid)
        await store.mark_finished(ACCOUNT, msgid)
    await store.settle()
    docs = {doc["item"]["msgid"]: doc async for doc in store.messages.find({"account": ACCOUNT})}
    assert [docs[m]["state"] for m in ("m1", "m2", "m3")] == [DONE, DONE, NEW]
    assert "pending" not in docs["m1"] and "expire_at" in docs["m1"]
    assert docs["m3"]["pending"] is True and "expire_at" not in docs["m3"]
    assert [p.item["msgid"] for p in await store.pending(ACCOUNT)] == ["m3"]


async def test_a_message_ended_but_unsettled_at_a_crash_is_never_handed_again_and_is_settled(
    db: Database,
) -> None:
    """The process died after m1's end was durable and before m1 was settled (its record still
    unfinished), with m2's handler started: the next start hands m2 again as a redelivery, not m1,
    and settles m1."""
    before = await recorded(db, "m1", "m2", "m3")
    await before.mark_handling(ACCOUNT, "m1")
    await before.handler_log.insert_one(
        {"_id": end_key(message_key(ACCOUNT, "m1")), "account": ACCOUNT, "at": 1.0}
    )
    await before.mark_handling(ACCOUNT, "m2")
    raw = await before.messages.find_one({"_id": message_key(ACCOUNT, "m1")})
    assert raw is not None and raw["pending"] is True  # as the crash left it

    after = PuppetStore(db)  # the restarted process
    pending = await after.pending(ACCOUNT)
    assert [(p.item["msgid"], p.redelivery) for p in pending] == [("m2", True), ("m3", False)]
    await after.settle()
    raw = await after.messages.find_one({"_id": message_key(ACCOUNT, "m1")})
    assert raw is not None and raw["state"] == DONE and "pending" not in raw
    assert [p.item["msgid"] for p in await after.pending(ACCOUNT)] == ["m2", "m3"]


async def test_a_conversation_shows_an_ended_message_as_done(db: Database) -> None:
    store = await recorded(db, "m1", "m2")
    await store.handler_log.insert_one(
        {"_id": end_key(message_key(ACCOUNT, "m1")), "account": ACCOUNT, "at": 5.0}
    )
    states = {entry["msgid"]: entry["state"] for entry in await store.conversation(ACCOUNT, "wmA")}
    assert states == {"m1": DONE, "m2": NEW}
