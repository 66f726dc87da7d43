"""The hub's up period (wxkf.up_period) changes only when no other replica was alive at a start: a
replica restarted beside a live one must not make every puppet pull."""

from __future__ import annotations

from wxkf import up_period
from wxkf.database import Database

TIMEOUT = 30.0


async def test_a_start_with_no_other_live_replica_begins_a_new_up_period(db: Database) -> None:
    replicas = db["manager_replicas"]
    first = await up_period.begin_unless_others_alive(db, replicas, "a", TIMEOUT, clock=lambda: 1000.0)
    await replicas.insert_one({"_id": "a", "seen_at": 1000.0})  # its own record does not count
    again = await up_period.begin_unless_others_alive(db, replicas, "a", TIMEOUT, clock=lambda: 1001.0)
    assert again != first and await up_period.current(db) == again


async def test_a_start_beside_a_live_replica_keeps_the_up_period_and_a_dead_one_does_not(
    db: Database,
) -> None:
    replicas = db["manager_replicas"]
    period = await up_period.begin_unless_others_alive(db, replicas, "a", TIMEOUT, clock=lambda: 1000.0)
    await replicas.insert_one({"_id": "b", "seen_at": 1000.0})
    kept = await up_period.begin_unless_others_alive(
        db, replicas, "a", TIMEOUT, clock=lambda: 1000.0 + TIMEOUT / 2
    )
    assert kept == period  # b took WeCom's callbacks meanwhile
    renewed = await up_period.begin_unless_others_alive(
        db, replicas, "a", TIMEOUT, clock=lambda: 1001.0 + TIMEOUT
    )
    assert renewed != period  # b has been silent longer than the replica timeout
