"""Subscriptions: who receives non-kf events (contact changes, app events...) and how it is signed.

A subscription matches by corp, app and event type (``*`` for any) and delivers a JSON document signed
per Standard Webhooks with its own ``whsec_`` secret, shown once at creation and stored sealed.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wxkf import webhooks
from wxkf.database import Database, durable
from wxkf.delivery import DeliveryClient
from wxkf.endpoints import IPNetwork, validate_endpoint
from wxkf.secretbox import SecretBox

COLLECTION = "subscriptions"
TARGET_PREFIX = "sub:"
ANY = "*"
EVENT_TYPE = re.compile(r"^(\*|[A-Za-z0-9_.-]{1,64})$")


class SubscriptionError(ValueError):
    """A subscription request is invalid; the message says why."""


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str
    url: str
    corp_id: str = ANY
    app: str = ANY
    event_types: tuple[str, ...] = (ANY,)
    secret: str = field(default="", repr=False)
    created_at: float = 0.0

    @property
    def target(self) -> str:
        return TARGET_PREFIX + self.id

    def matches(self, corp_id: str, app: str, event_type: str) -> bool:
        return (
            self.corp_id in (ANY, corp_id)
            and self.app in (ANY, app)
            and (ANY in self.event_types or event_type in self.event_types)
        )

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "corp_id": self.corp_id,
            "app": self.app,
            "event_types": list(self.event_types),
            "created_at": self.created_at,
        }


def delivery_body(doc: Mapping[str, Any]) -> bytes:
    """The JSON a subscriber receives for one stored event."""
    payload = {
        "id": doc["_id"],
        "type": doc["event_type"],
        "corp_id": doc["corp_id"],
        "app": doc["app"],
        "received_at": doc["received_at"],
        "event": doc.get("fields") or {},
    }
    if doc.get("open_kf_id"):
        payload["event"] = {"open_kfid": doc["open_kf_id"], "token": doc.get("token")}
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class SubscriptionSink:
    http: DeliveryClient
    subscription: Subscription
    timeout: float = 10.0

    async def deliver(self, doc: Mapping[str, Any]) -> None:
        await self.http.post(
            self.subscription.url,
            delivery_body(doc),
            content_type="application/json",
            event_id=doc["_id"],
            secret=self.subscription.secret,
            timeout=self.timeout,
        )


class Subscriptions:
    def __init__(self, db: Database, box: SecretBox, *, clock: Callable[[], float] = time.time) -> None:
        self._collection = durable(db[COLLECTION])
        self._box = box
        self._clock = clock
        self._items: dict[str, Subscription] = {}

    async def reload(self) -> None:
        items = {}
        async for doc in self._collection.find({}):
            items[doc["_id"]] = Subscription(
                id=doc["_id"],
                url=doc["url"],
                corp_id=doc.get("corp_id", ANY),
                app=doc.get("app", ANY),
                event_types=tuple(doc.get("event_types", [ANY])),
                secret=self._box.open(doc["secret"], context=f"subscription:{doc['_id']}"),
                created_at=float(doc.get("created_at", 0.0)),
            )
        self._items = items

    def all(self) -> list[Subscription]:
        return sorted(self._items.values(), key=lambda s: s.created_at)

    def get(self, subscription_id: str) -> Subscription | None:
        return self._items.get(subscription_id)

    def matching(self, corp_id: str, app: str, event_type: str) -> list[Subscription]:
        return [s for s in self._items.values() if s.matches(corp_id, app, event_type)]

    async def add(
        self,
        url: str,
        *,
        corp_id: str = ANY,
        app: str = ANY,
        event_types: Sequence[str] = (ANY,),
        allowed_networks: Sequence[IPNetwork] = (),
    ) -> Subscription:
        """Create a subscription; the returned object carries its secret (shown to the caller once)."""
        types = tuple(event_types) or (ANY,)
        if not all(EVENT_TYPE.match(t) for t in types):
            raise SubscriptionError("event_types must be '*' or names of letters, digits, '.', '_', '-'")
        url = await validate_endpoint(url, allowed_networks)
        subscription = Subscription(
            id=secrets.token_hex(8),
            url=url,
            corp_id=corp_id or ANY,
            app=app or ANY,
            event_types=types,
            secret=webhooks.generate_secret(),
            created_at=self._clock(),
        )
        await self._collection.insert_one(
            {
                "_id": subscription.id,
                "url": subscription.url,
                "corp_id": subscription.corp_id,
                "app": subscription.app,
                "event_types": list(types),
                "secret": self._box.seal(subscription.secret, context=f"subscription:{subscription.id}"),
                "created_at": subscription.created_at,
            }
        )
        self._items[subscription.id] = subscription
        return subscription

    async def remove(self, subscription_id: str) -> bool:
        result = await self._collection.delete_one({"_id": subscription_id})
        self._items.pop(subscription_id, None)
        return result.deleted_count == 1
