"""A real collection whose ``bulk_write`` misses its write concern, as on a primary stepdown.

The embedded server is a single node and cannot produce a write-concern error, so this wrapper lets the
real write happen and then raises the real :class:`pymongo.errors.BulkWriteError` a replica set gives
when the batch did not reach a majority: the documents are on the (old) primary, and may be rolled back.
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

STEPPED_DOWN = {
    "code": 189,
    "codeName": "PrimarySteppedDown",
    "errmsg": "Primary stepped down while waiting for replication",
    "errInfo": {"writeConcern": {"w": "majority", "j": True}},
}


class MissesWriteConcern:
    """Wraps ``collection``: its next ``failures`` bulk writes are applied, then miss their write concern."""

    def __init__(self, collection: AsyncCollection[Any], failures: int = 1) -> None:
        self._collection = collection
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)

    async def bulk_write(self, requests: list[Any], **kwargs: Any) -> Any:
        if self.failures <= 0:
            return await self._collection.bulk_write(requests, **kwargs)
        self.failures -= 1
        try:
            result = await self._collection.bulk_write(requests, **kwargs)
        except BulkWriteError as exc:  # e.g. duplicates in the batch: keep them, add the concern error
            details = dict(exc.details)
        else:
            details = {
                "writeErrors": [],
                "nInserted": result.inserted_count,
                "nUpserted": result.upserted_count,
                "nMatched": result.matched_count,
                "nModified": result.modified_count,
                "nRemoved": result.deleted_count,
                "upserted": [],
            }
        details["writeConcernErrors"] = [dict(STEPPED_DOWN)]
        raise BulkWriteError(details)
