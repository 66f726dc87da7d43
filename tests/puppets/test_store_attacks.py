"""Attacks on the handler log and the settled mark (puppets/store.py): states a crash, a clock step or a
failing database can leave in the store, and what the next start must still hand to the bot.

A "crash" here is a store abandoned without :meth:`PuppetStore.settle`, its background task cancelled:
what the database holds is exactly what was durably written, as after a SIGKILL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from puppets.store import DONE, SETTLE_AFTER, PuppetStore
from tests.support.crash import (
    CrashRig,
    assert_answered_once,
    assert_handled_once_in_order,
    crash_rig,
    hang,
    message,
)
from tests.support.kf_items import text_item as text
from tests.support.processes import stopped
from tests.support.replicas import clock_offset_env
from tests.support.waiting import wait_until
from wxkf.database import Database, Document, EmbeddedMongo
from wxkf.settings import Settings
from wxkf.tasks import stop_tasks

ACCOUNT = "wwcorp/wkone"


async def crash(store: PuppetStore) -> None:
    """Stop the store's background writes, as a SIGKILL would, without settling anything."""
    if store._keeper is not None:
        await stop_tasks([store._keeper])


def handed(pending: list[Any], customer: str) -> list[tuple[str, bool]]:
    return [(p.item["msgid"], p.redelivery) for p in pending if p.item["external_userid"] == customer]


async def test_after_the_clock_stepped_back_a_restart_keeps_each_customers_order(db: Database) -> None:
    """Run 1's clock was ahead: its messages' seqs are above anything run 2's clock gives. wmX's slow
    handler keeps the mark at its seq, below wmA's a1 and a2. Run 2 hands a1 again (cut off again by a
    crash) and records wmA's b. Run 3 must hand wmA's a1 (a redelivery), a2, b in that order: were b's
    seq taken from the mark, it would sort before a1, and a1 would lose its redelivery mark."""
    ahead = time.time_ns() + 10**15  # run 1's clock, far ahead of this one
    await db["puppet_accounts"].insert_one({"_id": ACCOUNT, "settled_below": ahead})
    run1 = PuppetStore(db)
    await run1.ensure_indexes()
    assert await run1.pending(ACCOUNT) == []
    await run1.record(ACCOUNT, [text("x", "wmX"), text("a1", "wmA"), text("a2", "wmA")])
    await run1.mark_handling(ACCOUNT, "x")  # slow: never ends
    await run1.mark_handling(ACCOUNT, "a1")
    await crash(run1)

    run2 = PuppetStore(db)
    pending = await run2.pending(ACCOUNT)
    assert handed(pending, "wmA") == [("a1", True), ("a2", False)]
    await run2.mark_handling(ACCOUNT, "a1")  # handed again, cut off again
    assert await run2.record(ACCOUNT, [text("b", "wmA")]) != []
    await crash(run2)

    run3 = PuppetStore(db)
    assert handed(await run3.pending(ACCOUNT), "wmA") == [("a1", True), ("a2", False), ("b", False)]


async def recorded_item(db: Database, msgid: str) -> None:
    async def stored() -> bool:
        return await db["puppet_messages"].find_one({"item.msgid": msgid}) is not None

    await wait_until(stored, 60, f"{msgid} recorded")


def started_by(rig: CrashRig, pid: int) -> list[tuple[str, bool]]:
    lines = rig.journal.lines()
    return [
        (line["msgid"], line["redelivery"]) for line in lines if line["at"] == "start" and line["pid"] == pid
    ]


async def test_real_puppets_keep_a_customers_order_across_a_restart_with_the_clock_a_day_behind(
    tmp_path: Path, settings: Settings, db: Database
) -> None:
    """Run 1 (the true clock) is killed with wmBOB's a1 running and a2 queued (both hold the bot the
    first time). Run 2 starts with its clock a day behind: a1 is redelivered and ends, a2 holds, b is
    recorded behind it, and the puppet is killed again. Run 3 must hand a2 (a redelivery: it was cut off)
    before b, and the verdict over all runs must hold."""
    async with crash_rig(tmp_path, settings, "direct") as rig:
        a1, a2 = [answer["msgid"] for answer in await rig.write_all([("wmBOB", hang()), ("wmBOB", hang())])]
        await rig.until(lambda journal: a1 in journal.started(), "a1 to start")
        await recorded_item(db, a2)
        rig.kill_puppet()

        rig.puppet.env |= clock_offset_env(-86400)
        await rig.start_puppet()
        assert rig.puppet.process is not None
        run2 = rig.puppet.process.pid
        await rig.until(lambda _: (a2, False) in started_by(rig, run2), "a2 to hold run 2")
        b = (await rig.write("wmBOB", message("text", "TextMessage", content="b")))["msgid"]
        await recorded_item(db, b)
        rig.kill_puppet()

        await rig.start_puppet()
        assert rig.puppet.process is not None
        run3 = rig.puppet.process.pid
        await rig.until(lambda _: len(started_by(rig, run3)) >= 2, "two starts in run 3")
        assert started_by(rig, run3)[:2] == [(a2, True), (b, False)]
        await rig.all_handled()
        assert_handled_once_in_order(rig, hung=[a1, a2])
        await assert_answered_once(rig)


async def test_a_kill_after_the_late_update_behind_a_slow_customer_hands_nothing_finished_again(
    tmp_path: Path, settings: Settings, db: Database
) -> None:
    """wmBOB's handler holds the settled mark; wmCAROL's messages end behind it and are updated to done
    (the late update, pending unset), and two more of hers end after that (not yet updated). SIGKILL:
    the next run hands wmBOB's again, as a redelivery, and none of wmCAROL's."""
    async with crash_rig(tmp_path, settings, "direct", customers=("wmBOB", "wmCAROL")) as rig:
        held = (await rig.write("wmBOB", hang()))["msgid"]
        await rig.until(lambda journal: held in journal.started(), "wmBOB's handler to hold")
        early = [
            (await rig.write("wmCAROL", message("text", "TextMessage", content=f"c{n}")))["msgid"]
            for n in range(5)
        ]
        await rig.until(lambda journal: set(early) <= journal.ended(), "wmCAROL's first five handled")

        async def updated() -> bool:
            found = db["puppet_messages"].find({"item.msgid": {"$in": early}, "pending": {"$exists": False}})
            return len([doc async for doc in found]) == len(early)

        await wait_until(updated, 60, "wmCAROL's first five updated to done behind wmBOB's")
        late = [
            (await rig.write("wmCAROL", message("text", "TextMessage", content=f"d{n}")))["msgid"]
            for n in range(2)
        ]
        await rig.until(lambda journal: set(late) <= journal.ended(), "two more of wmCAROL's handled")
        rig.kill_puppet()

        await rig.start_puppet()
        await rig.all_handled()
        assert_handled_once_in_order(rig, hung=[held])
        await assert_answered_once(rig)


async def test_a_database_hung_during_the_late_update_and_back_settles_and_hands_only_the_unfinished(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The embedded server is SIGSTOPped when wmB's ended messages fall due for the late update (the
    store's clock moved past ``SETTLE_AFTER``): the update fails by its deadline; once the server is
    back, settling completes, and the next start hands only wmA's unfinished message."""
    mongo = EmbeddedMongo(tmp_path)
    async with mongo as uri:
        client: AsyncMongoClient[Document] = AsyncMongoClient(uri, timeoutMS=1000)
        try:
            now = [1_000_000.0]
            store = PuppetStore(client.wxkf, clock=lambda: now[0], settle_interval=0.05)
            await store.ensure_indexes()
            assert await store.pending(ACCOUNT) == []
            others = [f"b{n}" for n in range(5)]
            await store.record(ACCOUNT, [text("slow", "wmA"), *(text(msgid, "wmB") for msgid in others)])
            await store.mark_handling(ACCOUNT, "slow")
            for msgid in others:
                await store.mark_handling(ACCOUNT, msgid)
                await store.mark_finished(ACCOUNT, msgid)
            slow = await store.messages.find_one({"item.msgid": "slow"})
            assert slow is not None

            async def marked() -> bool:
                account = await store.accounts.find_one({"_id": ACCOUNT}) or {}
                return account.get("settled_below") == slow["seq"]

            await wait_until(marked, 30, "the mark stored at wmA's message")  # what is left: the update
            assert mongo.pid is not None
            with caplog.at_level(logging.WARNING, logger="puppets.store"), stopped(mongo.pid):
                now[0] += 2 * SETTLE_AFTER  # wmB's ends are due for the late update

                async def failed() -> bool:
                    return any("settled marks failed" in record.getMessage() for record in caplog.records)

                await wait_until(failed, 30, "the late update to fail on the hung server")
            await store.settle()
            found = client.wxkf["puppet_messages"].find({"item.msgid": {"$in": others}})
            assert sorted([(doc["state"], "pending" in doc) async for doc in found]) == [(DONE, False)] * 5
            after = PuppetStore(client.wxkf, clock=lambda: now[0])
            assert [(p.item["msgid"], p.redelivery) for p in await after.pending(ACCOUNT)] == [("slow", True)]
        finally:
            await client.close()


async def test_a_message_updated_to_done_in_a_batch_is_kept_its_whole_retention_after_its_own_end(
    db: Database,
) -> None:
    """wmB's b1 and b2 end 4 s apart behind wmA's slow handler and are updated to done in one batch: b2
    must stay in the conversation until the retention after *its* end, not after b1's."""
    now = [1_000_000.0]
    store = PuppetStore(db, clock=lambda: now[0])
    await store.ensure_indexes()
    assert await store.pending(ACCOUNT) == []
    await store.record(ACCOUNT, [text("slow", "wmA"), text("b1", "wmB"), text("b2", "wmB")])
    await store.mark_handling(ACCOUNT, "slow")
    start = now[0]
    for msgid in ("b1", "b2"):
        await store.mark_handling(ACCOUNT, msgid)
        await store.mark_finished(ACCOUNT, msgid)
        now[0] += 4
    await store.settle()  # both in one batch (the stop-time settle takes every ended one)
    now[0] = start + store.retention + 2  # past b1's retention, not b2's (it ended at start + 4)
    await store.purge()
    assert [entry["msgid"] for entry in await store.conversation(ACCOUNT, "wmB")] == ["b2"]


async def test_one_accounts_slow_handler_holds_no_other_accounts_mark(db: Database) -> None:
    """Twenty accounts recording in turn; the first one's first message never ends. Every other account's
    mark passes all its messages (start-up reads none of them), and the first one's next start hands
    only the unfinished message, a redelivery."""
    accounts = [f"wwcorp/wk{n:02d}" for n in range(20)]
    store = PuppetStore(db)
    await store.ensure_indexes()
    for account in accounts:
        assert await store.pending(account) == []
    for round_ in range(3):
        for account in accounts:
            msgid = f"{account[-4:]}-{round_}"
            await store.record(account, [text(msgid, "wmA")])
            await store.mark_handling(account, msgid)
            if (account, round_) != (accounts[0], 0):
                await store.mark_finished(account, msgid)
    await store.settle()
    await crash(store)
    for account in accounts[1:]:
        mark = (await store.accounts.find_one({"_id": account}) or {}).get("settled_below", 0)
        last = await store.messages.find_one({"_id": f"{account}/{account[-4:]}-2"})
        assert last is not None and mark > last["seq"]
    after = PuppetStore(db)
    assert [(p.item["msgid"], p.redelivery) for p in await after.pending(accounts[0])] == [("wk00-0", True)]
    for account in accounts[1:]:
        assert await after.pending(account) == []


async def test_a_stop_time_settle_that_meets_a_hung_database_settles_everything_once_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopping settles every ended message above the mark, due or not. The server hangs during that
    pass (SIGSTOP); once it is back, the retry must still take every ended one, not only those due
    (the store's clock does not move here: none falls due)."""
    mongo = EmbeddedMongo(tmp_path)
    async with mongo as uri:
        client: AsyncMongoClient[Document] = AsyncMongoClient(uri, timeoutMS=1000)
        try:
            store = PuppetStore(client.wxkf, clock=lambda: 1_000_000.0, settle_interval=0.05)
            await store.ensure_indexes()
            assert await store.pending(ACCOUNT) == []
            others = [f"b{n}" for n in range(3)]
            await store.record(ACCOUNT, [text("slow", "wmA"), *(text(msgid, "wmB") for msgid in others)])
            await store.mark_handling(ACCOUNT, "slow")
            for msgid in others:
                await store.mark_handling(ACCOUNT, msgid)
                await store.mark_finished(ACCOUNT, msgid)
            assert mongo.pid is not None
            with caplog.at_level(logging.WARNING, logger="puppets.store"), stopped(mongo.pid):
                stopping = asyncio.create_task(store.settle(timeout=20))

                async def failed() -> bool:
                    return any("settled marks failed" in record.getMessage() for record in caplog.records)

                await wait_until(failed, 30, "the stop-time settle to fail on the hung server")
            await stopping
            found = client.wxkf["puppet_messages"].find({"item.msgid": {"$in": others}})
            assert sorted([(doc["state"], "pending" in doc) async for doc in found]) == [(DONE, False)] * 3
        finally:
            await client.close()
