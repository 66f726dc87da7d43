"""The puppet registry: which process serves which kf account, whether it is alive, and its secrets.

One document per account (``corpId/openKfId``), so a concurrent re-registration is one atomic upsert
rather than a race on a unique index. The corp secret and the per-puppet webhook secret are sealed.
No ``find_one_and_update`` and no ``$or``: SecantusDB runs both as a collection scan, which made
registration slow down with the fleet (:mod:`wxkf.database`). Reads on the dispatch path go through a
short in-memory cache; registration and liveness changes made by this process invalidate it at once,
other replicas' changes are seen within ``cache_ttl`` (plus the time of one lookup).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING

from wxkf.database import Database, chunks, durable, up_to
from wxkf.retry import JITTER
from wxkf.secretbox import SecretBox
from wxkf.single_flight import SingleFlight

log = logging.getLogger(__name__)

COLLECTION = "puppets"
_NO_SOCKET = {"socket_owner": None, "socket_life": None, "socket_claim": None}
CACHE_LIMIT = 50_000  # entries; bounds memory under many accounts (least recently used evicted)


@dataclass(frozen=True, slots=True)
class _Entry:
    refresh_after: float  # a lookup after this refreshes the entry in the background
    expires_at: float  # a lookup after this waits for a fresh answer
    puppet: Puppet | None


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
    socket_owner: str | None = None  # the manager replica whose WebSocket serves this puppet, if any

    @property
    def live(self) -> bool:
        return self.registered and self.online

    def served_by_another(self, owner: str) -> bool:
        """Its socket is open to a manager replica other than ``owner`` (which must not deliver)."""
        return self.socket_owner is not None and self.socket_owner != owner

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
        self._cache: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        # Local changes, numbered: a lookup that started before the last change of its key must not
        # store what it read. Bounded like the cache; a lookup older than an evicted change stores nothing.
        self._changes = 0
        self._changed: OrderedDict[str, int] = OrderedDict()
        self._evicted_changes = 0
        self._lookups: SingleFlight[Puppet | None] = SingleFlight()

    async def ensure_indexes(self) -> None:
        await self._collection.create_index([("open_kfid", ASCENDING)])
        await self._collection.create_index([("probe_at", ASCENDING)])
        await self._collection.create_index([("socket_owner", ASCENDING)])  # release_sockets

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
            socket_owner=doc.get("socket_owner"),
        )

    async def get(self, key: str) -> Puppet | None:
        """The puppet registered for ``key`` (None: none), from the cache when it is there.

        No answer is older than ``cache_ttl``: an entry is refreshed in the background, once, when a
        lookup finds it past its refresh time (a jittered point in the second half of its life), and
        an entry ``cache_ttl`` old is looked up before it answers. Both for the same reason: at 500
        callbacks/s, a fleet's entries expiring at once made a burst of lookups, several per account,
        that stalled intake every ``cache_ttl``.
        """
        hit = self._cache.get(key)
        now = self._clock()
        if hit is None or now >= hit.expires_at:
            return await self.fresh(key)
        self._cache.move_to_end(key)
        if now >= hit.refresh_after:
            self._lookups.start(key, lambda: self._load(key)).add_done_callback(_log_failed_refresh)
        return hit.puppet

    async def fresh(self, key: str) -> Puppet | None:
        """The puppet as stored, not as cached (joins a lookup already under way)."""
        return await self._lookups.run(key, lambda: self._load(key))

    async def _load(self, key: str) -> Puppet | None:
        changes = self._changes
        doc = await self._collection.find_one({"_id": key})
        puppet = self._decode(doc) if doc else None
        if self._changed.get(key, self._evicted_changes) <= changes:  # nothing changed here meanwhile
            self._remember(key, puppet)
        return puppet

    def _remember(self, key: str, puppet: Puppet | None) -> None:
        now = self._clock()
        refresh_after = now + self._cache_ttl * JITTER.uniform(0.5, 0.9)
        self._cache[key] = _Entry(refresh_after, now + self._cache_ttl, puppet)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_LIMIT:
            self._cache.popitem(last=False)  # the least recently used

    def _forget(self, key: str) -> None:
        """This process changed ``key``: drop its entry, and keep a lookup already in flight (which may
        have read the old state) from storing what it read."""
        self._cache.pop(key, None)
        self._changes += 1
        self._changed[key] = self._changes
        self._changed.move_to_end(key)
        while len(self._changed) > CACHE_LIMIT:
            _, change = self._changed.popitem(last=False)
            self._evicted_changes = max(self._evicted_changes, change)

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
                    **_NO_SOCKET,  # a socket proof claims it after registering (claim_socket)
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
        self._forget(key)
        self._remember(key, puppet)
        return puppet

    async def deregister(self, key: str) -> bool:
        result = await self._collection.update_one(
            {"_id": key}, {"$set": {"registered": False, "online": False, "probe_at": None}}
        )
        self._forget(key)
        return result.matched_count == 1

    async def mark_online(self, key: str) -> bool:
        """Record a sign of life; True if the puppet was offline before (its queue should flow now)."""
        return await self._seen(key, {})

    async def _seen(self, key: str, extra: Mapping[str, Any]) -> bool:
        seen = {"online": True, "last_seen_at": self._clock(), "probe_at": None, "probe_failures": 0, **extra}
        came_back = await self._collection.update_one(
            {"_id": key, "registered": True, "online": {"$ne": True}}, {"$set": seen}
        )
        if not came_back.matched_count:
            await self._collection.update_one({"_id": key, "registered": True}, {"$set": seen})
        self._forget(key)
        return came_back.matched_count == 1

    async def mark_offline(
        self,
        key: str,
        probe_at: float | None,
        failures: int,
        *,
        by: str | None = None,
        registered_at: float | None = None,
    ) -> bool:
        """The puppet did not answer. ``by`` (a manager replica): only if no other replica holds its
        socket, since only the replica with the socket can tell (see :meth:`claim_socket`).
        ``probe_at`` None: never probed (only a registration or a sign of life brings it back).
        ``registered_at``: only if it is still that registration. True if it was marked offline."""
        where: dict[str, Any] = {"_id": key, "registered": True}
        if by is not None:
            where["socket_owner"] = {"$in": [None, by]}
        if registered_at is not None:
            where["registered_at"] = registered_at
        marked = await self._collection.update_one(
            where, {"$set": {"online": False, "probe_at": probe_at, "probe_failures": failures}}
        )
        self._forget(key)
        return marked.matched_count == 1

    # -- socket puppets: which replica holds the socket ---------------------------------------
    async def claim_socket(self, key: str, owner: str, life: str, claim: str) -> bool:
        """Replica ``owner`` (in process ``life``) accepted a socket proof for ``key``: its deliveries
        go through that replica from now on (the newest claim wins), and the puppet is online, in the
        same write, so no replica can mark it offline in between. ``claim`` (unique per proof) fences
        the release. True if the puppet was offline before."""
        return await self._seen(key, {"socket_owner": owner, "socket_life": life, "socket_claim": claim})

    async def release_socket(self, key: str, claim: str) -> None:
        """The socket of ``claim`` closed: forget the claim, unless a newer proof replaced it."""
        await self._collection.update_one({"_id": key, "socket_claim": claim}, {"$set": _NO_SOCKET})
        self._forget(key)

    async def release_sockets(self, owner: str, life: str | None = None) -> int:
        """Forget the socket claims of replica ``owner`` (of its process ``life`` only, if given): at
        its start, a new process holds no socket; at its takeover, a dead one holds none. Returns how
        many were forgotten."""
        where: dict[str, Any] = {"socket_owner": owner} | ({"socket_life": life} if life is not None else {})
        keys = [doc["_id"] async for doc in self._collection.find(where, projection={"_id": 1})]
        for some in chunks(keys):
            await self._collection.update_many({"_id": {"$in": list(some)}} | where, {"$set": _NO_SOCKET})
        for key in keys:
            self._forget(key)
        return len(keys)

    async def due_for_probe(self, limit: int = 100) -> list[tuple[Puppet, int]]:
        """Offline registered puppets whose next probe is due, with their failure counts."""
        cursor = self._collection.find({"probe_at": up_to(self._clock())}, limit=limit)
        return [(self._decode(doc), int(doc.get("probe_failures", 0))) async for doc in cursor]

    async def count(self) -> int:
        return await self._collection.count_documents({})

    async def all(self, limit: int = 1000) -> list[Puppet]:
        return [self._decode(doc) async for doc in self._collection.find({}, limit=limit)]


def _log_failed_refresh(refresh: asyncio.Future[Puppet | None]) -> None:
    if not refresh.cancelled() and (exc := refresh.exception()) is not None:
        log.debug("background refresh of a puppet failed (the cached entry stays): %s", exc)
