"""How ``kf_msg_or_event`` callbacks reach the manager.

Over HTTP the gateway speaks the manager's compat route,
``POST {MANAGER_ENDPOINT}/callback/decrypted/{corpId}`` with ``{token, openKfId}``: a Node manager
understands it; ours also reads ``eventId`` to dedupe. In one process (``wxkf up``) the same document
is handed to the manager's intake function directly.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from wxkf.delivery import DeliveryError, post

MANAGER_TARGET = "manager"


@dataclass(frozen=True, slots=True)
class HttpManagerSink:
    http: httpx.AsyncClient
    endpoint: str
    timeout: float = 10.0

    async def deliver(self, doc: Mapping[str, Any]) -> None:
        body = json.dumps(
            {"token": doc["token"], "openKfId": doc["open_kf_id"], "eventId": doc["_id"]}
        ).encode()
        url = f"{self.endpoint.rstrip('/')}/callback/decrypted/{quote(doc['corp_id'], safe='')}"
        headers = {"content-type": "application/json", "webhook-id": doc["_id"]}
        await post(self.http, url, content=body, headers=headers, timeout=self.timeout)


@dataclass(frozen=True, slots=True)
class InProcessManagerSink:
    accept: Callable[[Mapping[str, Any]], Awaitable[None]]

    async def deliver(self, doc: Mapping[str, Any]) -> None:
        try:
            await self.accept(doc)
        except DeliveryError:
            raise
        except Exception as exc:
            raise DeliveryError(f"manager refused: {exc}") from exc
