"""How ``kf_msg_or_event`` callbacks reach the manager.

Over HTTP the gateway speaks the manager's compat route,
``POST {MANAGER_ENDPOINT}/callback/decrypted/{corpId}`` with ``{token, openKfId}``: a Node manager
understands it; ours also reads ``eventId`` to dedupe, and requires the caller to authenticate
(``WXKF_GATEWAY_TOKEN`` as a bearer token, and/or an address in ``WXKF_GATEWAY_NETWORKS``).

In one process (``wxkf up``) there is no forward at all: the gateway calls the manager's durable intake
(:data:`ManagerIntake`) before it answers WeCom, so the manager's own event log is where the callback is
persisted. That is one stored copy instead of two (inbox, then the manager's log) and no "forwarded"
update: half the database writes per callback, which is what bounds ``wxkf up``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from gateway.intake import CallbackEvent
from wxkf.delivery import DeliveryClient

MANAGER_TARGET = "manager"

ManagerIntake = Callable[[CallbackEvent], Awaitable[bool]]
"""Stores a kf callback durably in the manager; False when it was already stored (WeCom's retry)."""


@dataclass(frozen=True, slots=True)
class HttpManagerSink:
    """Forwards to a manager's ``/callback/decrypted/{corpId}``, authenticated with ``token``
    (``WXKF_GATEWAY_TOKEN``, sent as a bearer token) when one is set."""

    http: DeliveryClient
    endpoint: str
    timeout: float = 10.0
    token: str | None = field(default=None, repr=False)

    async def deliver(self, doc: Mapping[str, Any]) -> None:
        body = json.dumps(
            {"token": doc["token"], "openKfId": doc["open_kf_id"], "eventId": doc["_id"]}
        ).encode()
        url = f"{self.endpoint.rstrip('/')}/callback/decrypted/{quote(doc['corp_id'], safe='')}"
        headers = {"authorization": f"Bearer {self.token}"} if self.token else None
        await self.http.post(
            url,
            body,
            content_type="application/json",
            event_id=doc["_id"],
            headers=headers,
            timeout=self.timeout,
        )
