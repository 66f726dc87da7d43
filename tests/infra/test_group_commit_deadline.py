"""A write queued behind a batch that hangs fails by its own deadline, not after the hung batch's
deadline plus its own: with the database hung, WeCom gets its 503 after one ``WXKF_DB_TIMEOUT``.

The hang is real: the embedded SecantusDB child is SIGSTOPped."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from tests.support.processes import stopped
from wxkf.database import Document, EmbeddedMongo, durable
from wxkf.group_commit import GroupCommit

TIMEOUT = 2.0


async def failure_time(write: asyncio.Task[bool]) -> float:
    with pytest.raises(PyMongoError):
        await write
    return time.monotonic()


async def test_a_write_queued_behind_a_hung_batch_fails_by_its_own_deadline(tmp_path: Path) -> None:
    mongo = EmbeddedMongo(tmp_path)
    async with mongo as uri:
        client: AsyncMongoClient[Document] = AsyncMongoClient(uri, timeoutMS=int(TIMEOUT * 1000))
        try:
            writes = GroupCommit(durable(client.wxkf.items))
            assert await writes.insert({"_id": "warm"})  # a pooled connection exists
            assert mongo.pid is not None
            with stopped(mongo.pid):
                first = asyncio.create_task(writes.insert({"_id": "first"}))
                await asyncio.sleep(0)  # let its batch start (and hang)
                queued = asyncio.create_task(writes.insert({"_id": "queued"}))  # waits for the next batch
                async with asyncio.timeout(10 * TIMEOUT):
                    first_failed = await failure_time(first)
                    queued_failed = await failure_time(queued)
            # Before: the queued write's batch started only when the first had failed, and then waited
            # a whole timeout of its own. Now its deadline runs from when it was queued.
            assert queued_failed - first_failed < TIMEOUT / 2
        finally:
            await client.close()
