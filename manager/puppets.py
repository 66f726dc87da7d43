"""The puppet registry: which process serves which kf account, whether it is alive, and its secrets.

One document per account (``corpId/openKfId``), so a concurrent re-registration is one atomic upsert
rather than a race on a unique index. The corp secret and the per-puppet webhook secret are sealed.
No ``find_one_and_update`` and no ``$or``: SecantusDB runs both as a collection scan, which made
registration slow down with the fleet (:mod:`wxkf.database`). Reads on the dispatch path go through a
short in-memory cache; registration and liveness changes made by this process invalidate it at once,
other replicas' changes are seen within ``cache_ttl``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING

from wxkf.database import Database, durable, up_to
from wxkf.secretbox import SecretBox

COLLECTION = "puppets"


@dataclass(frozen=True, slots=True)
class Puppet:
    key: str
    corp_id: str
    open_kfid: str
    kf_name: str
    endpoint: str
    app: str | None
    registered: bool
    online: bool
    registered_at: float
    last_seen_at: float
    webhook_secret: str = field(repr=False)
    corp_secret: str = field(repr=False)

    @property
    def live(self) -> bool:
        return self.registered and self.online

    def public(self, *, show_endpoint: bool = False) -> dict[str, Any]:
        """The registration record with every secret removed (compat ``puppetWxkfInfo`` fields)."""
        info: dict[str, Any] = {
            "kfId": self.open_kfid,
            "kfName": self.kf_name,
            "corpId": self.corp_id,
            "online": self.online,
            "registered": self.registered,
            "registeredAt": self.registered_at,
            "lastSeenAt": self.last_seen_at,
        }
        if show_endpoint:
            info["endpoint"] = self.endpoint
        return info


class PuppetRegistry:
    def __init__(
        self,
        db: Database,
        box: SecretBox,
        *,
        cache_ttl: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._collection = durable(db[COLLECTION])
        self._box = box
        self._clock = clock
        self._cache_ttl = cache_ttl
        self._cache: dict[str, tuple[float, Puppet | None]] = {}

    async def ensure_indexes(self) -> None:
        await self._collection.create_index([("open_kfid", ASCENDING)])
        await self._collection.create_index([("probe_at", ASCENDING)])

    def _decode(self, doc: Mapping[str, Any]) -> Puppet:
        key = doc["_id"]
        return Puppet(
            key=key,
            corp_id=doc["corp_id"],
            open_kfid=doc["open_kfid"],
            kf_name=doc.get("kf_name", ""),
            endpoint=doc["endpoint"],
            app=doc.get("app"),
            registered=bool(doc.get("registered")),
            online=bool(doc.get("online")),
            registered_at=float(doc.get("registered_at", 0.0)),
            last_seen_at=float(doc.get("last_seen_at", 0.0)),
            webhook_secret=self._box.open(doc["webhook_secret"], context=f"puppet-webhook:{key}"),
            corp_secret=self._box.open(doc["corp_secret"], context=f"puppet-corp-secret:{key}"),
        )

    async def get(self, key: str) -> Puppet | None:
        now = self._clock()
        hit = self._cache.get(key)
        if hit and now - hit[0] < self._cache_ttl:
            return hit[1]
        doc = await self._collection.find_one({"_id": key})
        puppet = self._decode(doc) if doc else None
        self._cache[key] = (now, puppet)
        if len(self._cache) > 50_000:  # bound memory under many accounts
            self._cache.clear()
        return puppet

    async def by_kf_id(self, open_kfid: str) -> Puppet | None:
        doc = await self._collection.find_one({"open_kfid": open_kfid}, sort=[("registered_at", -1)])
        return self._decode(doc) if doc else None

    async def register(
        self,
        key: str,
        *,
        corp_id: str,
        open_kfid: str,
        kf_name: str,
        endpoint: str,
        app: str | None,
        corp_secret: str,
        webhook_secret: str,
    ) -> Puppet:
        now = self._clock()
        await self._collection.update_one(
            {"_id": key},
            {
                "$set": {
                    "corp_id": corp_id,
                    "open_kfid": open_kfid,
                    "kf_name": kf_name,
                    "endpoint": endpoint,
                    "app": app,
                    "registered": True,
                    "online": True,
                    "registered_at": now,
                    "last_seen_at": now,
                    "probe_at": None,
                    "probe_failures": 0,
                    "corp_secret": self._box.seal(corp_secret, context=f"puppet-corp-secret:{key}"),
                    "webhook_secret": self._box.seal(webhook_secret, context=f"puppet-webhook:{key}"),
                }
            },
            upsert=True,
        )
        puppet = Puppet(
            key=key,
            corp_id=corp_id,
            open_kfid=open_kfid,
            kf_name=kf_name,
            endpoint=endpoint,
            app=app,
            registered=True,
            online=True,
            registered_at=now,
            last_seen_at=now,
            webhook_secret=webhook_secret,
            corp_secret=corp_secret,
        )
        self._cache[key] = (now, puppet)
        return puppet

    async def deregister(self, key: str) -> bool:
        result = await self._collection.update_one(
            {"_id": key}, {"$set": {"registered": False, "online": False, "probe_at": None}}
        )
        self._cache.pop(key, None)
        return result.matched_count == 1

    async def mark_online(self, key: str) -> bool:
        """Record a sign of life; True if the puppet was offline before (its queue should flow now)."""
        seen = {"online": True, "last_seen_at": self._clock(), "probe_at": None, "probe_failures": 0}
        came_back = await self._collection.update_one(
            {"_id": key, "registered": True, "online": {"$ne": True}}, {"$set": seen}
        )
        if not came_back.matched_count:
            await self._collection.update_one({"_id": key, "registered": True}, {"$set": seen})
        self._cache.pop(key, None)
        return came_back.matched_count == 1

    async def mark_offline(self, key: str, probe_at: float, failures: int) -> None:
        await self._collection.update_one(
            {"_id": key, "registered": True},
            {"$set": {"online": False, "probe_at": probe_at, "probe_failures": failures}},
        )
        self._cache.pop(key, None)

    async def due_for_probe(self, limit: int = 100) -> list[tuple[Puppet, int]]:
        """Offline registered puppets whose next probe is due, with their failure counts."""
        cursor = self._collection.find({"probe_at": up_to(self._clock())}, limit=limit)
        return [(self._decode(doc), int(doc.get("probe_failures", 0))) async for doc in cursor]

    async def count(self) -> int:
        return await self._collection.count_documents({})

    async def all(self, limit: int = 1000) -> list[Puppet]:
        return [self._decode(doc) async for doc in self._collection.find({}, limit=limit)]
