"""A page whose durable record failed part way: every message it stored reaches the handler once.

A page's inserts are answered one by one (a page of 1,000 items spans two group-commit batches, and
one document of a batch can fail alone), so a record can fail after storing part of its page; an
insert that raised may or may not have left its document. When the pull is retried (the cursor did
not move), what that failed attempt stored counts as new, and what an earlier record had stored stays
a duplicate, however the failed attempt's insert answered for it. Here a document over the size limit
is the one that fails.
"""

from __future__ import annotations

from typing import Any

import pytest

from puppets.store import ACCOUNTS, MESSAGES, PuppetStore
from tests.support.kf_items import text_item as text
from wxkf.database import Database

ACCOUNT = "wwcorp/wkone"
TOO_LARGE = "x" * (17 * 1024 * 1024)  # over the 16 MiB document limit: its insert fails alone


def page(count: int, *, too_large_at: int | None = None, prefix: str = "m") -> list[dict[str, Any]]:
    return [
        text(f"{prefix}{index}", content=TOO_LARGE if index == too_large_at else None)
        for index in range(count)
    ]


async def new_store(db: Database) -> PuppetStore:
    store = PuppetStore(db)
    await store.ensure_indexes()
    return store


def failed() -> pytest.RaisesExc[RuntimeError]:
    return pytest.raises(RuntimeError, match="too large")


async def test_what_a_failed_record_stored_is_new_when_the_page_is_read_again(db: Database) -> None:
    """All but the last of the page are stored: before, the retry called them duplicates, and they
    waited for the next start."""
    store = await new_store(db)
    size = 5
    with failed():
        await store.record(ACCOUNT, page(size, too_large_at=size - 1))
    assert await db[MESSAGES].count_documents({"account": ACCOUNT}) == size - 1
    fresh = await store.record(ACCOUNT, page(size))
    assert [item["msgid"] for item in fresh] == [f"m{index}" for index in range(size)]
    assert await store.record(ACCOUNT, page(size)) == []  # and once only


async def test_a_message_recorded_before_a_failed_attempt_stays_a_duplicate(db: Database) -> None:
    """A page read again (a stored cursor lags behind) whose record fails: its messages recorded the
    first time must not become new on the retry, even the one whose insert raised (before, the retry
    of an insert that raised was new, and that message reached the handler twice)."""
    store = await new_store(db)
    earlier = page(3, prefix="old")
    assert len(await store.record(ACCOUNT, earlier)) == 3
    with failed():
        await store.record(ACCOUNT, [text("old0", content=TOO_LARGE), *earlier[1:], *page(3)])
    fresh = await store.record(ACCOUNT, [*earlier, *page(3)])
    assert [item["msgid"] for item in fresh] == ["m0", "m1", "m2"]


async def test_after_a_failed_record_the_settled_mark_moves_on(db: Database) -> None:
    """The failed attempt's old messages (duplicates) are not left counted as unfinished: once the new
    ones end, the account's mark passes them all."""
    store = await new_store(db)
    earlier = page(2, prefix="old")
    for item in await store.record(ACCOUNT, earlier):
        await store.mark_handling(ACCOUNT, item["msgid"])
        await store.mark_finished(ACCOUNT, item["msgid"])
    with failed():
        await store.record(ACCOUNT, [*earlier, *page(2, too_large_at=1)])
    for item in await store.record(ACCOUNT, [*earlier, *page(2)]):
        await store.mark_handling(ACCOUNT, item["msgid"])
        await store.mark_finished(ACCOUNT, item["msgid"])
    await store.settle()
    account = await db[ACCOUNTS].find_one({"_id": ACCOUNT})
    assert account is not None
    highest = max([doc["seq"] async for doc in db[MESSAGES].find({"account": ACCOUNT})])
    assert account["settled_below"] > highest
