"""Group commit on the real embedded server: per-document answers, and nothing acknowledged on a missed
write concern."""

from __future__ import annotations

import asyncio

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


async def test_the_next_batch_after_a_write_concern_error_succeeds(db: Database) -> None:
    collection = durable(db["gc"])
    writer = GroupCommit(MissesWriteConcern(collection))  # type: ignore[arg-type]
    with pytest.raises(WriteConcernError):
        await writer.insert({"_id": "a"})
    # the retry finds the document the failed batch left: a duplicate, not an error
    assert await writer.insert({"_id": "a"}) is False
    assert await writer.insert({"_id": "b"}) is True
