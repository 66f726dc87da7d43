"""The mailbox's intake and delivery marks, which decide what is delivered and when (no dispatcher)."""

from __future__ import annotations

from manager.mailbox import DECRYPTED, MAILBOXES, Latest, MailboxStore, account_key, arrival_key
from tests.support.clock import FakeClock
from wxkf.database import Database

CORP, KF = "ww0000000000000001", "wkACCOUNT"
KEY = account_key(CORP, KF)


def latest(event: str, at: int) -> Latest:
    return Latest(event, f"{at:020d}-{event}", DECRYPTED, token=f"token-{event}")


async def test_the_event_written_last_carries_the_token_and_every_event_is_logged(db: Database) -> None:
    clock = FakeClock()
    store = MailboxStore(db, clock=clock)
    await store.ensure_indexes()
    assert await store.accept(CORP, KF, latest("ahead", 2), parked=False)
    assert await store.accept(CORP, KF, latest("behind", 1), parked=False)  # later, from a host behind

    mailbox = await store.get(KEY)
    assert mailbox is not None and mailbox.latest is not None
    assert mailbox.latest.event_id == "behind"
    assert {doc["_id"] for doc in await store.events(KEY)} == {"ahead", "behind"}
    assert not await store.accept(CORP, KF, latest("ahead", 3), parked=False)  # WeCom's retry


async def test_a_recovered_older_event_counts_as_work_but_keeps_the_newer_token(db: Database) -> None:
    store = MailboxStore(db, clock=FakeClock())
    await store.ensure_indexes()
    await store.bump(KEY, latest("newer", 2), due=True)
    await store.bump(KEY, latest("older", 1), due=True, only_if_newer=True)  # a dead replica's
    mailbox = await store.get(KEY)
    assert mailbox is not None and mailbox.seq == 2 and mailbox.latest is not None
    assert mailbox.latest.event_id == "newer"


async def test_work_handed_over_by_a_host_whose_clock_is_ahead_is_due_at_once_for_one_behind(
    db: Database,
) -> None:
    ahead = MailboxStore(db, clock=FakeClock(FakeClock().now + 5))
    behind = MailboxStore(db, owner="mgr-behind", clock=FakeClock())
    await ahead.ensure_indexes()
    await ahead.bump(KEY, latest("a", 1), due=True)
    assert [mailbox.key for mailbox in await behind.due("mgr-behind")] == [KEY]


async def test_new_work_keeps_a_backoff_and_a_delivery_keeps_newer_work_due(db: Database) -> None:
    clock = FakeClock()
    store = MailboxStore(db, clock=clock)
    await store.ensure_indexes()
    await store.accept(CORP, KF, latest("a", 1), parked=False)
    await store.failed(KEY, latest("a", 1), 1, clock() + 300, "HTTP 500")
    await store.accept(CORP, KF, latest("b", 2), parked=False)
    mailbox = await store.get(KEY)
    assert mailbox is not None and mailbox.due_at == clock() + 300  # still backing off

    await store.delivered(KEY, 2, "00000000000000000001-a")  # up to the failure's write; b came since
    mailbox = await store.get(KEY)
    assert mailbox is not None and mailbox.due_at is not None

    await store.delivered(KEY, 3, "00000000000000000002-b")
    mailbox = await store.get(KEY)
    assert mailbox is not None and mailbox.due_at is None and mailbox.delivered.endswith("-b")


async def test_parked_work_is_stored_but_not_due(db: Database) -> None:
    store = MailboxStore(db, clock=FakeClock())
    await store.ensure_indexes()
    await store.accept(CORP, KF, latest("a", 1), parked=True)
    mailbox = await store.get(KEY)
    assert mailbox is not None and mailbox.due_at is None and mailbox.latest is not None


async def test_logged_events_are_purged_by_arrival_after_the_retention(db: Database) -> None:
    clock = FakeClock()
    store = MailboxStore(db, clock=clock, keep_for=3600)
    await store.ensure_indexes()
    await store.log(CORP, KF, Latest("old", arrival_key(clock(), "old"), DECRYPTED, token="t"))
    clock.advance(1800)
    await store.log(CORP, KF, Latest("young", arrival_key(clock(), "young"), DECRYPTED, token="t"))
    clock.advance(1801)
    assert await store.purge_expired() == 1
    assert [doc["_id"] for doc in await store.events(KEY)] == ["young"]


async def test_an_event_with_an_older_arrival_is_still_new_work(db: Database) -> None:
    store = MailboxStore(db, clock=FakeClock())
    await store.ensure_indexes()
    await store.accept(CORP, KF, latest("ahead", 2), parked=False)  # from a host whose clock is ahead
    mailbox = await store.get(KEY)
    assert mailbox is not None
    await store.delivered(KEY, mailbox.seq, mailbox.delivered)
    await store.accept(CORP, KF, latest("behind", 1), parked=False)  # later, from a host behind
    mailbox = await store.get(KEY)
    assert mailbox is not None and mailbox.has_work and mailbox.due_at is not None


async def test_pending_work_in_a_mailbox_from_before_work_was_counted_is_still_work(db: Database) -> None:
    store = MailboxStore(db, clock=FakeClock())
    old = {"corp_id": CORP, "open_kfid": KF, "due_at": None}
    await db[MAILBOXES].insert_many(
        [
            {"_id": KEY, **old, "latest": latest("a", 2).to_doc(), "delivered": latest("z", 1).arrival},
            {
                "_id": "corp/done",
                **old,
                "latest": latest("b", 1).to_doc(),
                "delivered": latest("b", 1).arrival,
            },
        ]
    )
    await store.ensure_indexes()
    pending, done = await store.get(KEY), await store.get("corp/done")
    assert pending is not None and pending.has_work and done is not None and not done.has_work
