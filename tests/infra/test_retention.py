"""Retention: an indexed, batched delete of what has expired, instead of SecantusDB's full-scan TTL sweep."""

from __future__ import annotations

from pymongo import ASCENDING

from wxkf import retention
from wxkf.database import Database

NOW = 1_800_000_000.0


async def test_purge_deletes_only_expired_documents_in_batches(db: Database) -> None:
    collection = db["events"]
    await retention.ensure_expiry_index(collection)
    await collection.insert_many(
        [{"_id": f"old-{i}", "expire_at": retention.expiry(NOW, -60)} for i in range(7)]
        + [{"_id": "fresh", "expire_at": retention.expiry(NOW, 60)}, {"_id": "pending"}]
    )

    assert await retention.purge_expired(collection, NOW, batch=3) == 7

    assert sorted([doc["_id"] async for doc in collection.find()]) == ["fresh", "pending"]
    assert await retention.purge_expired(collection, NOW, batch=3) == 0


async def test_expiry_index_is_plain_and_replaces_an_old_ttl_index(db: Database) -> None:
    collection = db["events"]
    await collection.create_index([("expire_at", ASCENDING)], expireAfterSeconds=0)

    await retention.ensure_expiry_index(collection)
    await retention.ensure_expiry_index(collection)  # idempotent

    index = (await collection.index_information())[retention.INDEX_NAME]
    assert index["key"] == [("expire_at", ASCENDING)]
    assert "expireAfterSeconds" not in index
