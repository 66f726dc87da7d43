"""Attacks on the handler log and the settled mark (puppets/store.py): states a crash, a clock step or a
failing database can leave in the store, and what the next start must still hand to the bot.

A "crash" here is a store abandoned without :meth:`PuppetStore.settle`, its background task cancelled:
what the database holds is exactly what was durably written, as after a SIGKILL.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from puppets.store import PuppetStore
from tests.support.crash import (
    CrashRig,
    assert_answered_once,
    assert_handled_once_in_order,
    crash_rig,
    hang,
    message,
)
from tests.support.replicas import clock_offset_env
from tests.support.waiting import wait_until
from wxkf.database import Database
from wxkf.settings import Settings
from wxkf.tasks import stop_tasks

ACCOUNT = "wwcorp/wkone"


def text(msgid: str, customer: str) -> dict[str, Any]:
    return {
        "msgid": msgid,
        "open_kfid": "wkone",
        "external_userid": customer,
        "send_time": 1,
        "origin": 3,
        "msgtype": "text",
        "text": {"content": msgid},
    }


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
