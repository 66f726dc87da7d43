"""The corp app registry: which Token/EncodingAESKey (and optionally secret) verify which callback URL.

Apps live in Mongo with their secrets sealed; every replica keeps the decrypted :class:`CorpApp`
objects in memory because each callback needs one. Changes made through another replica are picked up
by a periodic full reload and, at once, by a *corp refresh* when a callback names a corp or app this
replica does not know or fails verification (a rotated key): one indexed query for that corp's
documents, decrypting only those.

A corp refresh is what an unauthenticated caller can trigger, so it is bounded three ways: each corp
is refreshed at most once per ``refresh_interval`` however many callbacks name it (a flood of bad
signatures costs one small query per interval); a corp found unknown stays unknown for that long
without a query (a negative cache); and at most ``refreshes_per_second`` corp refreshes run in all,
so random corp ids cost at most that many indexed lookups a second. The memory of refreshes is
bounded (``REFRESH_MEMORY`` corps, the oldest forgotten first).
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING

from wecom.crypto import MsgCrypt
from wecom.models import CORP_ID
from wxkf.database import Database, durable
from wxkf.secretbox import SecretBox

log = logging.getLogger(__name__)

COLLECTION = "corp_apps"
DEFAULT_APP = "default"
REFRESH_MEMORY = 10_000  # corps whose last refresh time is remembered
APP_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class RegistryError(ValueError):
    """A registration request is invalid; the message says why."""


@dataclass(frozen=True, slots=True)
class CorpApp:
    corp_id: str
    name: str
    is_default: bool
    crypt: MsgCrypt = field(repr=False)
    secret: str | None = field(default=None, repr=False)
    created_at: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.corp_id}/{self.name}"

    def public(self) -> dict[str, Any]:
        """What listings show: never the token, key or secret."""
        path = f"/callback/{self.corp_id}" if self.is_default else f"/callback/{self.corp_id}/{self.name}"
        return {
            "corp_id": self.corp_id,
            "name": self.name,
            "default": self.is_default,
            "has_secret": self.secret is not None,
            "callback_path": path,
            "created_at": self.created_at,
        }


class AppRegistry:
    def __init__(
        self,
        db: Database,
        box: SecretBox,
        *,
        refresh_interval: float = 2.0,
        refreshes_per_second: float = 20.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._collection = durable(db[COLLECTION])
        self._box = box
        self._clock = clock
        self._apps: dict[str, CorpApp] = {}
        self._by_corp: dict[str, list[CorpApp]] = {}  # the same apps, by corp id
        self._refresh_interval = refresh_interval
        self._refreshed: OrderedDict[str, float] = OrderedDict()  # corp id -> when last refreshed
        self._rate = refreshes_per_second
        self._allowance = refreshes_per_second  # a token bucket of corp refreshes
        self._allowance_at = clock()
        self.refreshes = 0  # corp refreshes run (a measure of what callers made this replica do)

    async def ensure_indexes(self) -> None:
        await self._collection.create_index([("corp_id", ASCENDING)])

    # -- reading ----------------------------------------------------------------------------
    def _decode(self, doc: dict[str, Any]) -> CorpApp:
        context = doc["_id"]
        secret = doc.get("secret")
        return CorpApp(
            corp_id=doc["corp_id"],
            name=doc["name"],
            is_default=bool(doc.get("default")),
            crypt=MsgCrypt(
                self._box.open(doc["token"], context=f"app-token:{context}"),
                self._box.open(doc["aes_key"], context=f"app-aes-key:{context}"),
                doc["corp_id"],
            ),
            secret=self._box.open(secret, context=f"app-secret:{context}") if secret else None,
            created_at=float(doc.get("created_at", 0.0)),
        )

    async def reload(self) -> None:
        """Load every app (start-up, the periodic reload, after an admin change)."""
        self._use({app.key: app for app in await self._load({})})

    async def _load(self, query: dict[str, Any]) -> list[CorpApp]:
        apps = []
        async for doc in self._collection.find(query):
            try:
                apps.append(self._decode(doc))
            except Exception:  # one undecryptable record must not take every corp down
                log.exception("corp app %s cannot be loaded (wrong WXKF_SECRET_KEY?)", doc.get("_id"))
        return apps

    async def refresh(self, corp_id: str) -> bool:
        """Re-read one corp's apps from the database, unless the bounds above say not now.

        True if it re-read them. A corp id that cannot exist is never looked up.
        """
        if not CORP_ID.fullmatch(corp_id) or not self._may_refresh(corp_id):
            return False
        self.refreshes += 1
        fresh = {app.key: app for app in await self._load({"corp_id": corp_id})}
        apps = {key: app for key, app in self._apps.items() if app.corp_id != corp_id}
        self._use(apps | fresh)
        return True

    def _use(self, apps: dict[str, CorpApp]) -> None:
        by_corp: dict[str, list[CorpApp]] = {}
        for app in apps.values():
            by_corp.setdefault(app.corp_id, []).append(app)
        self._apps, self._by_corp = apps, by_corp

    def _may_refresh(self, corp_id: str) -> bool:
        now = self._clock()
        last = self._refreshed.get(corp_id)
        if last is not None and now - last < self._refresh_interval:
            return False
        self._allowance = min(self._rate, self._allowance + (now - self._allowance_at) * self._rate)
        self._allowance_at = now
        if self._allowance < 1.0:
            return False
        self._allowance -= 1.0
        self._refreshed[corp_id] = now
        self._refreshed.move_to_end(corp_id)
        while len(self._refreshed) > REFRESH_MEMORY:
            self._refreshed.popitem(last=False)
        return True

    def lookup(self, corp_id: str, name: str | None) -> CorpApp | None:
        """The app a callback path names, from memory. ``name=None`` means the corp's default app."""
        if name is not None:
            return self._apps.get(f"{corp_id}/{name}")
        candidates = self._by_corp.get(corp_id, ())
        if len(candidates) == 1:
            return candidates[0]
        return next((app for app in candidates if app.is_default), None)

    async def resolve(self, corp_id: str, name: str | None) -> CorpApp | None:
        """:meth:`lookup`, refreshing the corp (within the bounds) when it is not known here."""
        app = self.lookup(corp_id, name)
        if app is None and await self.refresh(corp_id):
            app = self.lookup(corp_id, name)
        return app

    async def knows_corp(self, corp_id: str) -> bool:
        """Whether ``corp_id`` has any app (refreshing it within the bounds if not known here)."""
        if corp_id in self._by_corp:
            return True
        return await self.refresh(corp_id) and corp_id in self._by_corp

    def apps(self, corp_id: str | None = None) -> list[CorpApp]:
        found: Iterable[CorpApp] = self._apps.values() if corp_id is None else self._by_corp.get(corp_id, ())
        return sorted(found, key=lambda app: app.key)

    # -- writing ----------------------------------------------------------------------------
    async def add(
        self,
        corp_id: str,
        name: str | None,
        token: str,
        encoding_aes_key: str,
        secret: str | None = None,
        *,
        default: bool | None = None,
    ) -> CorpApp:
        """Create or replace an app. The first app of a corp becomes its default."""
        name = name or DEFAULT_APP
        if not CORP_ID.fullmatch(corp_id):
            raise RegistryError("corp_id must be 1-64 characters of letters, digits, '_' or '-'")
        if not APP_NAME.fullmatch(name):
            raise RegistryError("app name must be 1-64 characters of letters, digits, '.', '_' or '-'")
        if not token or len(token) > 128:
            raise RegistryError("token must be 1-128 characters")
        try:
            MsgCrypt(token, encoding_aes_key, corp_id)
        except ValueError as exc:
            raise RegistryError(str(exc)) from None
        key = f"{corp_id}/{name}"
        existing = await self._collection.find_one({"corp_id": corp_id}, projection={"_id": 1})
        if default is None:
            current = await self._collection.find_one({"_id": key}, projection={"default": 1})
            default = bool(current["default"]) if current else existing is None
        now = self._clock()
        doc: dict[str, Any] = {
            "corp_id": corp_id,
            "name": name,
            "default": default,
            "token": self._box.seal(token, context=f"app-token:{key}"),
            "aes_key": self._box.seal(encoding_aes_key, context=f"app-aes-key:{key}"),
            "secret": self._box.seal(secret, context=f"app-secret:{key}") if secret else None,
            "updated_at": now,
        }
        if default:
            await self._collection.update_many(
                {"corp_id": corp_id, "_id": {"$ne": key}}, {"$set": {"default": False}}
            )
        await self._collection.update_one(
            {"_id": key}, {"$set": doc, "$setOnInsert": {"created_at": now}}, upsert=True
        )
        await self.reload()
        app = self._apps[key]
        log.info("registered corp app %s (default=%s)", key, app.is_default)
        return app

    async def remove(self, corp_id: str, name: str | None) -> bool:
        app = self.lookup(corp_id, name)
        if app is None:
            await self.reload()
            app = self.lookup(corp_id, name)
        if app is None:
            return False
        result = await self._collection.delete_one({"_id": app.key})
        await self.reload()
        return result.deleted_count == 1

    def find_by_credentials(self, corp_id: str, token: str, encoding_aes_key: str) -> CorpApp | None:
        """An existing app of ``corp_id`` with exactly these callback credentials."""
        probe = MsgCrypt(token, encoding_aes_key, corp_id)
        for app in self.apps(corp_id):
            if app.crypt.token == token and app.crypt.same_key(probe):
                return app
        return None
