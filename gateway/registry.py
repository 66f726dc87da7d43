"""The corp app registry: which Token/EncodingAESKey (and optionally secret) verify which callback URL.

Apps live in Mongo with their secrets sealed; every replica keeps the decrypted :class:`CorpApp`
objects in memory because each callback needs one. Changes made through another replica are picked up
by a periodic reload and by a rate-limited reload when a callback names an unknown app or fails
verification (so a key rotation is effective at once, while a flood of bogus corp ids costs at most
one reload per ``miss_reload_interval``).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING

from wecom.crypto import MsgCrypt
from wxkf.database import Database, durable
from wxkf.secretbox import SecretBox

log = logging.getLogger(__name__)

COLLECTION = "corp_apps"
DEFAULT_APP = "default"
CORP_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
APP_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


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
        miss_reload_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._collection = durable(db[COLLECTION])
        self._box = box
        self._clock = clock
        self._apps: dict[str, CorpApp] = {}
        self._miss_reload_interval = miss_reload_interval
        self._last_reload = float("-inf")

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
        apps = {}
        async for doc in self._collection.find({}):
            try:
                app = self._decode(doc)
            except Exception:  # one undecryptable record must not take every corp down
                log.exception("corp app %s cannot be loaded (wrong WXKF_SECRET_KEY?)", doc.get("_id"))
                continue
            apps[app.key] = app
        self._apps = apps
        self._last_reload = self._clock()

    async def reload_if_allowed(self) -> bool:
        """Reload unless one happened within ``miss_reload_interval``; True if it reloaded."""
        if self._clock() - self._last_reload < self._miss_reload_interval:
            return False
        await self.reload()
        return True

    def lookup(self, corp_id: str, name: str | None) -> CorpApp | None:
        """The app a callback path names, from memory. ``name=None`` means the corp's default app."""
        if name is not None:
            return self._apps.get(f"{corp_id}/{name}")
        candidates = [app for app in self._apps.values() if app.corp_id == corp_id]
        if len(candidates) == 1:
            return candidates[0]
        return next((app for app in candidates if app.is_default), None)

    async def resolve(self, corp_id: str, name: str | None) -> CorpApp | None:
        app = self.lookup(corp_id, name)
        if app is None and await self.reload_if_allowed():
            app = self.lookup(corp_id, name)
        return app

    def apps(self, corp_id: str | None = None) -> list[CorpApp]:
        found: Iterable[CorpApp] = self._apps.values()
        if corp_id is not None:
            found = (app for app in found if app.corp_id == corp_id)
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
        if not CORP_ID.match(corp_id):
            raise RegistryError("corp_id must be 1-64 characters of letters, digits, '_' or '-'")
        if not APP_NAME.match(name):
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
