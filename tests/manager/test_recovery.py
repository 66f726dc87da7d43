"""Replica checkpoints: what a restarted or a dead manager had not delivered is found again, and only that."""

from __future__ import annotations

from manager.account_state import Undelivered
from manager.mailbox import DECRYPTED, Latest, MailboxStore
from manager.recovery import Recovery
from tests.support.clock import FakeClock
from wxkf.database import Database

CORP = "ww0000000000000001"


async def replica(db: Database, owner: str, clock: FakeClock) -> tuple[MailboxStore, Undelivered, Recovery]:
    mailboxes = MailboxStore(db, owner=owner, clock=clock)
    await mailboxes.ensure_indexes()
    undelivered = Undelivered()
    recovery = Recovery(db, mailboxes, undelivered, owner, timeout=30.0, clock=clock, monotonic=clock)
    await recovery.ensure_indexes()
    return mailboxes, undelivered, recovery


async def log_undelivered(
    mailboxes: MailboxStore, undelivered: Undelivered, kf: str, event: str, now: float
) -> Latest:
    latest = Latest(event, undelivered.mint(now, event), DECRYPTED, token=f"token-{event}")
    undelivered.add(f"{CORP}/{kf}", latest)
    assert await mailboxes.log(CORP, kf, latest)
    return latest


async def test_a_dead_replica_is_taken_over_once_from_its_checkpoint(db: Database) -> None:
    clock = FakeClock()
    dead_boxes, dead_undelivered, dead = await replica(db, "mgr-dead", clock)
    assert await dead.recover_own() == 0
    settled = await log_undelivered(dead_boxes, dead_undelivered, "wkA", "settled", clock())
    dead_undelivered.done(f"{CORP}/wkA", settled)
    await dead.checkpoint()  # "settled" is before the checkpoint: not rescanned
    await log_undelivered(dead_boxes, dead_undelivered, "wkA", "a1", clock())
    newest = await log_undelivered(dead_boxes, dead_undelivered, "wkA", "a2", clock())
    await log_undelivered(dead_boxes, dead_undelivered, "wkB", "b1", clock())
    # ... and then it dies: no checkpoint for 31 s
    live_boxes, _, live = await replica(db, "mgr-live", clock)
    await live.recover_own()
    assert await live.take_over_dead() == 0  # not silent for long enough yet
    clock.advance(31)
    await live.checkpoint()
    assert await live.take_over_dead() == 2  # wkA and wkB
    mailbox = await live_boxes.get(f"{CORP}/wkA")
    assert mailbox is not None and mailbox.latest == newest and mailbox.due_at is not None
    assert await live.take_over_dead() == 0  # once: the dead replica's document is gone


async def test_a_replica_that_was_taken_over_learns_it_at_its_next_checkpoint(db: Database) -> None:
    clock = FakeClock()
    _, _, slow = await replica(db, "mgr-slow", clock)
    _, _, other = await replica(db, "mgr-other", clock)
    await slow.recover_own()
    assert await slow.checkpoint()
    await other.recover_own()
    await other.take_over_dead()  # sees mgr-slow's document
    clock.advance(31)  # unchanged since, as far as mgr-other's clock goes
    await other.take_over_dead()
    assert not await slow.checkpoint()  # its leases were ended: it must drop them
    assert await slow.checkpoint()  # and then carries on as a live replica


async def test_a_restart_recovers_its_own_undelivered_events(db: Database) -> None:
    clock = FakeClock()
    boxes, undelivered, first = await replica(db, "mgr-1", clock)
    await first.recover_own()
    owed = await log_undelivered(boxes, undelivered, "wkA", "a1", clock())
    await first.checkpoint()
    # SIGKILL; the same replica id starts again with an empty undelivered
    boxes, _, again = await replica(db, "mgr-1", clock)
    assert await again.recover_own() == 1
    mailbox = await boxes.get(f"{CORP}/wkA")
    assert mailbox is not None and mailbox.latest == owed
