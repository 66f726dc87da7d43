"""Deleting finished documents once their retention (``WXKF_RETENTION_DAYS``) has passed.

Documents that may go carry an ``expire_at`` date; pending work never does. A plain index on
``expire_at`` plus a periodic ranged delete does the job of a TTL index, and is used instead of one
because SecantusDB's TTL sweeper decodes *every* document of a TTL-indexed collection each minute
under its storage lock: writes stalled 0.5–1.4 s per sweep at 30,000–100,000 documents, growing with
retention (docs/benchmarks.md). The ranged delete only touches what has expired, on MongoDB as well.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection

from wxkf.database import up_to
from wxkf.tasks import run_every

log = logging.getLogger(__name__)

FIELD = "expire_at"
INDEX_NAME = "expire_at_1"


def expiry(now: float, keep_for: float) -> datetime:
    """The ``expire_at`` value for a document to be kept ``keep_for`` seconds from ``now``."""
    return datetime.fromtimestamp(now + keep_for, tz=UTC)


async def ensure_expiry_index(collection: AsyncCollection[Any]) -> None:
    """A plain ascending index on ``expire_at``; replaces a TTL index left by an older version."""
    existing = (await collection.index_information()).get(INDEX_NAME)
    if existing is not None and "expireAfterSeconds" in existing:
        await collection.drop_index(INDEX_NAME)
    await collection.create_index([(FIELD, ASCENDING)], name=INDEX_NAME)


async def purge_expired(collection: AsyncCollection[Any], now: float, *, batch: int = 100) -> int:
    """Delete documents whose ``expire_at`` is before ``now``, ``batch`` at a time; return how many.

    Batches keep each delete short, so intake writes are never held behind one huge delete, and its
    ``$in`` list small (SecantusDB's cost grows with its square: :func:`wxkf.database.chunks`).
    """
    return await purge_before(collection, FIELD, datetime.fromtimestamp(now, tz=UTC), batch=batch)


async def purge_before(
    collection: AsyncCollection[Any], field: str, cutoff: float | datetime | str, *, batch: int = 100
) -> int:
    """Delete documents whose indexed ``field`` is below ``cutoff``, ``batch`` at a time."""
    expired = {field: up_to(cutoff, inclusive=False)}
    deleted = 0
    while True:
        ids = [doc["_id"] async for doc in collection.find(expired, projection={"_id": 1}, limit=batch)]
        if not ids:
            return deleted
        result = await collection.delete_many({"_id": {"$in": ids}, **expired})
        deleted += result.deleted_count
        if len(ids) < batch:
            return deleted
        await asyncio.sleep(0)  # let waiting requests in between batches


async def run_purger(purge: Callable[[], Awaitable[int]], what: str, interval: float = 60.0) -> None:
    """Background loop: call ``purge`` every ``interval`` seconds (jittered, so replicas spread out)."""

    async def step() -> None:
        deleted = await purge()
        if deleted:
            log.info("purged %d expired %s", deleted, what)

    await run_every(step, interval, f"purging expired {what}", jitter=0.2)
