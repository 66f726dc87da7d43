"""Mongo persistence for cached access tokens: one document per *proven* (corpid, secret).

A pair is proven once WeCom issued a token for it; nothing is written for a pair before that, so
unauthenticated callers trying random corpids or secrets leave no documents behind. The document ``_id``
is a keyed fingerprint of corpid and secret, so a lookup never needs the secret in clear and a wrong
secret can never land on someone else's document. The secret itself and the token are stored sealed
with the server key. A lease field gives cross-replica single flight for renewals: only the replica
holding an unexpired lease calls ``gettoken`` upstream.

Each document carries two times: ``expires_at``, until when the token is served (a conservative
estimate of WeCom's expiry), and ``renew_at``, the first moment at which ``gettoken`` is sure to
return a *new* token (WeCom returns the current one until it expires).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from wxkf.database import Database, durable
from wxkf.secretbox import SecretBox

COLLECTION = "access_tokens"


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What one replica knows about one proven app's token, decrypted."""

    key: str
    corp_id: str
    secret: str = field(repr=False)
    token: str | None = field(repr=False)
    expires_at: float = 0.0
    renew_at: float = 0.0
    refreshed_at: float = 0.0
    forced_at: float = 0.0  # the last refresh an invalidation report asked for
    generation: int = 0
    failure_errcode: int | None = None
    failure_errmsg: str | None = None
    retry_at: float = 0.0
    failures: int = 0
    lease_until: float = 0.0

    def valid_for(self, now: float) -> float:
        """Seconds of validity left (0 when there is no token)."""
        return max(0.0, self.expires_at - now) if self.token else 0.0


@dataclass(frozen=True, slots=True)
class Issue:
    """One ``gettoken`` answer, timed: served until ``expires_at``, renewed at ``renew_at``."""

    token: str = field(repr=False)
    expires_at: float
    renew_at: float
    fetched_at: float


class TokenStore:
    """Reads and writes ``access_tokens`` documents; knows nothing about upstream."""

    def __init__(self, db: Database, box: SecretBox) -> None:
        self._collection = durable(db[COLLECTION])
        self._box = box
        self._fingerprint_key = box.derive_key("token fingerprint")

    async def ensure_indexes(self) -> None:
        """Create the index renewals use, and delete the documents of pairs that were never proven
        (earlier versions wrote one for every pair asked about: one scan, once per start)."""
        await self._collection.create_index([("renew_at", ASCENDING)])
        await self._collection.delete_many({"generation": 0})

    def key_for(self, corp_id: str, secret: str) -> str:
        message = f"{corp_id}\x00{secret}".encode()
        return f"{corp_id}:{hmac.new(self._fingerprint_key, message, hashlib.sha256).hexdigest()[:32]}"

    def _decode(self, doc: dict[str, Any]) -> TokenRecord:
        key = doc["_id"]
        token_sealed = doc.get("token")
        expires_at = float(doc.get("expires_at", 0.0))
        return TokenRecord(
            key=key,
            corp_id=doc["corp_id"],
            secret=self._box.open(doc["secret"], context=f"token-secret:{key}"),
            token=self._box.open(token_sealed, context=f"access-token:{key}") if token_sealed else None,
            expires_at=expires_at,
            renew_at=float(doc.get("renew_at", expires_at)),
            refreshed_at=float(doc.get("refreshed_at", 0.0)),
            forced_at=float(doc.get("forced_at", 0.0)),
            generation=int(doc.get("generation", 0)),
            failure_errcode=doc.get("failure_errcode"),
            failure_errmsg=doc.get("failure_errmsg"),
            retry_at=float(doc.get("retry_at", 0.0)),
            failures=int(doc.get("failures", 0)),
            lease_until=float(doc.get("lease_until", 0.0)),
        )

    async def load(self, key: str) -> TokenRecord | None:
        doc = await self._collection.find_one({"_id": key})
        return self._decode(doc) if doc else None

    def _token_fields(self, key: str, issue: Issue) -> dict[str, Any]:
        return {
            "token": self._box.seal(issue.token, context=f"access-token:{key}"),
            "expires_at": issue.expires_at,
            "renew_at": issue.renew_at,
            "refreshed_at": issue.fetched_at,
            "failure_errcode": None,
            "failure_errmsg": None,
            "failures": 0,
            "retry_at": 0.0,
            "lease_owner": None,
            "lease_until": 0.0,
        }

    async def save_proven(self, corp_id: str, secret: str, issue: Issue) -> TokenRecord:
        """Create the document of a pair WeCom just issued a token for; the first replica to prove a
        pair wins, and the record returned is whichever document is stored."""
        key = self.key_for(corp_id, secret)
        fields = {
            **self._token_fields(key, issue),
            "corp_id": corp_id,
            "secret": self._box.seal(secret, context=f"token-secret:{key}"),
            "generation": 1,
        }
        # generation 0 matches only a document an older version left before proving it; a duplicate key
        # means another replica proved the pair first, and its token is served
        with contextlib.suppress(DuplicateKeyError):
            await self._collection.update_one({"_id": key, "generation": 0}, {"$set": fields}, upsert=True)
        record = await self.load(key)
        assert record is not None, "a proven token document vanished right after it was written"
        return record

    async def try_lease(self, seen: TokenRecord, owner: str, now: float, ttl: float) -> bool:
        """Take the refresh lease if it is free or expired.

        The lease is granted only while the document is still the version the caller read
        (same ``generation`` and ``failures``): a replica that read the record just before
        another replica stored a fresh token or a failure must re-read, not call upstream again.
        A live lease is refused to its own holder too: the background renewal and a caller in the
        same process must not both call upstream.
        """
        result = await self._collection.update_one(
            {
                "_id": seen.key,
                "generation": seen.generation,
                "failures": seen.failures or {"$in": [0, None]},
                "lease_until": {"$lt": now},
            },
            {"$set": {"lease_owner": owner, "lease_until": now + ttl}},
        )
        return result.matched_count == 1

    async def release(self, key: str, owner: str) -> None:
        await self._collection.update_one(
            {"_id": key, "lease_owner": owner}, {"$set": {"lease_until": 0.0, "lease_owner": None}}
        )

    async def save_token(self, key: str, issue: Issue, *, forced: bool = False) -> None:
        """Store a renewal's answer (a new token, or the current one with fresh timings), clear the
        failure state and release the lease in one write. ``forced``: an invalidation asked for it."""
        fields = self._token_fields(key, issue)
        if forced:
            fields["forced_at"] = issue.fetched_at
        await self._collection.update_one({"_id": key}, {"$set": fields, "$inc": {"generation": 1}})

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

    async def due_for_renewal(self, now: float, limit: int = 1000) -> list[TokenRecord]:
        """Documents whose ``renew_at`` has come (indexed; only due documents match)."""
        cursor = self._collection.find({"renew_at": {"$gt": 0.0, "$lte": now}}, limit=limit)
        return [self._decode(doc) async for doc in cursor]

    async def next_renewal(self, now: float, horizon: float) -> float | None:
        """The earliest ``renew_at`` in ``(now, horizon]``, if any."""
        cursor = self._collection.find(
            {"renew_at": {"$gt": now, "$lte": horizon}}, projection={"renew_at": 1}, limit=1
        ).sort("renew_at", ASCENDING)
        async for doc in cursor:
            return float(doc["renew_at"])
        return None

    async def count(self) -> int:
        """How many (proven) pairs are stored."""
        return await self._collection.count_documents({})

    async def delete(self, key: str) -> None:
        await self._collection.delete_one({"_id": key})
