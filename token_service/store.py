"""Mongo persistence for cached access tokens: one document per (corpid, secret).

The document ``_id`` is a keyed fingerprint of corpid and secret, so a lookup never needs the secret in
clear and a wrong secret can never land on someone else's document. The secret itself and the token are
stored sealed with the server key. A lease field gives cross-replica single flight: only the replica
holding an unexpired lease calls ``gettoken`` upstream.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING

from wxkf.database import Database, durable
from wxkf.secretbox import SecretBox

COLLECTION = "access_tokens"


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What one replica knows about one app's token, decrypted."""

    key: str
    corp_id: str
    secret: str = field(repr=False)
    token: str | None = field(repr=False)
    expires_at: float = 0.0
    refreshed_at: float = 0.0
    generation: int = 0
    failure_errcode: int | None = None
    failure_errmsg: str | None = None
    retry_at: float = 0.0
    failures: int = 0

    def valid_for(self, now: float) -> float:
        """Seconds of validity left (0 when there is no token)."""
        return max(0.0, self.expires_at - now) if self.token else 0.0


class TokenStore:
    """Reads and writes ``access_tokens`` documents; knows nothing about upstream."""

    def __init__(self, db: Database, box: SecretBox) -> None:
        self._collection = durable(db[COLLECTION])
        self._box = box
        self._fingerprint_key = box.derive_key("token fingerprint")

    async def ensure_indexes(self) -> None:
        await self._collection.create_index([("expires_at", ASCENDING)])

    def key_for(self, corp_id: str, secret: str) -> str:
        message = f"{corp_id}\x00{secret}".encode()
        return f"{corp_id}:{hmac.new(self._fingerprint_key, message, hashlib.sha256).hexdigest()[:32]}"

    def _decode(self, doc: dict[str, Any]) -> TokenRecord:
        key = doc["_id"]
        token_sealed = doc.get("token")
        return TokenRecord(
            key=key,
            corp_id=doc["corp_id"],
            secret=self._box.open(doc["secret"], context=f"token-secret:{key}"),
            token=self._box.open(token_sealed, context=f"access-token:{key}") if token_sealed else None,
            expires_at=float(doc.get("expires_at", 0.0)),
            refreshed_at=float(doc.get("refreshed_at", 0.0)),
            generation=int(doc.get("generation", 0)),
            failure_errcode=doc.get("failure_errcode"),
            failure_errmsg=doc.get("failure_errmsg"),
            retry_at=float(doc.get("retry_at", 0.0)),
            failures=int(doc.get("failures", 0)),
        )

    async def load(self, key: str) -> TokenRecord | None:
        doc = await self._collection.find_one({"_id": key})
        return self._decode(doc) if doc else None

    async def ensure(self, corp_id: str, secret: str) -> str:
        """Create the app's document (with its sealed secret) if it does not exist; return its key."""
        key = self.key_for(corp_id, secret)
        await self._collection.update_one(
            {"_id": key},
            {
                "$setOnInsert": {
                    "corp_id": corp_id,
                    "secret": self._box.seal(secret, context=f"token-secret:{key}"),
                    "expires_at": 0.0,
                    "generation": 0,
                    "failures": 0,
                    "lease_until": 0.0,
                }
            },
            upsert=True,
        )
        return key

    async def try_lease(self, seen: TokenRecord, owner: str, now: float, ttl: float) -> bool:
        """Take the refresh lease if it is free or expired (or already ours).

        The lease is granted only while the document is still the version the caller read
        (same ``generation`` and ``failures``): a replica that read the record just before
        another replica stored a fresh token or a failure must re-read, not call upstream again.
        """
        version = {
            "_id": seen.key,
            "generation": seen.generation,
            "failures": seen.failures or {"$in": [0, None]},
        }
        take = {"$set": {"lease_owner": owner, "lease_until": now + ttl}}
        # Two point updates rather than one ``$or`` findAndModify, which SecantusDB runs as a collection
        # scan (wxkf.database). Each is atomic on the document, so the version check holds for both.
        for holder in ({"lease_owner": owner}, {"lease_until": {"$lt": now}}):
            result = await self._collection.update_one({**version, **holder}, take)
            if result.matched_count:
                return True
        return False

    async def release(self, key: str, owner: str) -> None:
        await self._collection.update_one(
            {"_id": key, "lease_owner": owner}, {"$set": {"lease_until": 0.0, "lease_owner": None}}
        )

    async def save_token(self, key: str, owner: str, token: str, expires_at: float, now: float) -> None:
        """Store a fresh token, clear failure state and release the lease in one write."""
        await self._collection.update_one(
            {"_id": key},
            {
                "$set": {
                    "token": self._box.seal(token, context=f"access-token:{key}"),
                    "expires_at": expires_at,
                    "refreshed_at": now,
                    "failure_errcode": None,
                    "failure_errmsg": None,
                    "failures": 0,
                    "retry_at": 0.0,
                    "lease_owner": None,
                    "lease_until": 0.0,
                },
                "$inc": {"generation": 1},
            },
        )

    async def save_failure(
        self, key: str, owner: str, errcode: int, errmsg: str, retry_at: float, failures: int
    ) -> None:
        await self._collection.update_one(
            {"_id": key},
            {
                "$set": {
                    "failure_errcode": errcode,
                    "failure_errmsg": errmsg,
                    "retry_at": retry_at,
                    "failures": failures,
                    "lease_owner": None,
                    "lease_until": 0.0,
                }
            },
        )

    async def due_for_refresh(self, before: float, limit: int = 1000) -> list[str]:
        """Keys of tokens that expire before ``before`` (indexed; only due documents match)."""
        cursor = self._collection.find(
            {"expires_at": {"$gt": 0.0, "$lt": before}}, projection={"_id": 1}, limit=limit
        )
        return [doc["_id"] async for doc in cursor]

    async def delete(self, key: str) -> None:
        await self._collection.delete_one({"_id": key})
