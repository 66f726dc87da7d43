"""Group commit on the real embedded server: per-document answers, and nothing acknowledged on a missed
write concern."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymongo.errors import WriteConcernError

from tests.support.write_concern import MissesWriteConcern
from wxkf.database import Database, durable
from wxkf.group_commit import GroupCommit


async def test_concurrent_writes_share_a_batch_and_duplicates_answer_false(db: Database) -> None:
    collection = durable(db["gc"])
    await collection.insert_one({"_id": "old"})
    writer = GroupCommit(collection)
    results = await asyncio.gather(*(writer.insert({"_id": i}) for i in ["a", "b", "old", "c"]))
    assert results == [True, True, False, True]
    assert writer.batches < writer.operations
    assert await collection.count_documents({}) == 4


async def test_a_write_concern_error_fails_every_write_of_the_batch(db: Database) -> None:
    collection = durable(db["gc"])
    await collection.insert_one({"_id": "old"})
    writer = GroupCommit(MissesWriteConcern(collection))  # type: ignore[arg-type]
    results = await asyncio.gather(
        *(writer.insert({"_id": i}) for i in ["a", "b", "old"]), return_exceptions=True
    )
    # the documents may be on the old primary, but none is known to survive: nobody may say "stored"
    assert all(isinstance(result, WriteConcernError) for result in results), results
    assert "stepped down" in str(results[0])


async def test_a_retry_after_a_write_concern_error_counts_as_the_first_store(db: Database) -> None:
    collection = durable(db["gc"])
    writer = GroupCommit(MissesWriteConcern(collection))  # type: ignore[arg-type]
    with pytest.raises(WriteConcernError):
        await writer.insert({"_id": "a"})
    # the retry finds the document the failed batch left; its caller acknowledged nothing, so this
    # one must act on it as new (queue it, deliver it), not drop it as someone else's duplicate
    assert await writer.insert({"_id": "a"}) is True
    assert await writer.insert({"_id": "a"}) is False  # from now on, a real duplicate
    assert await writer.insert({"_id": "b"}) is True


class HeldWrites:
    """The real collection; each ``bulk_write`` waits for ``release`` once it has begun (``entered``)."""

    def __init__(self, collection: Any) -> None:
        self._collection = collection
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def bulk_write(self, requests: list[Any], **kwargs: Any) -> Any:
        self.entered.set()
        await self.release.wait()
        return await self._collection.bulk_write(requests, **kwargs)


async def test_a_retry_after_a_cancelled_insert_counts_as_the_first_store(db: Database) -> None:
    collection = durable(db["gc"])
    held = HeldWrites(collection)
    writer = GroupCommit(held)  # type: ignore[arg-type]
    first = asyncio.create_task(writer.insert({"_id": "a"}))
    async with asyncio.timeout(10):
        await held.entered.wait()
    first.cancel()  # its caller went away (e.g. WeCom hung up) while the batch was being written
    with pytest.raises(asyncio.CancelledError):
        await first
    held.release.set()
    assert await writer.insert({"_id": "a"}) is True  # WeCom's retry: the first that may acknowledge
    assert await collection.count_documents({}) == 1
