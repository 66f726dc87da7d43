"""The wire format of a dispatch to a puppet, exactly as Node puppets expect it, plus signatures.

* a callback that came in encrypted goes to ``{endpoint}/callback`` as the original XML with the
  original query string (the puppet verifies and decrypts it itself);
* a decrypted one goes to ``{endpoint}/callback/decrypted`` as ``{"token", "openKfId"}``.

Every delivery also carries Standard Webhooks headers signed with the puppet's own secret (issued at
registration); Node puppets ignore them, ours verify them. ``webhook-id`` is the stable event id.
"""

from __future__ import annotations

import json

import httpx

from manager.dispatcher import PuppetUnreachable
from manager.mailbox import RAW, Latest
from manager.puppets import Puppet
from wxkf import webhooks
from wxkf.delivery import DeliveryError


def request_for(puppet: Puppet, latest: Latest) -> tuple[str, bytes, dict[str, str]]:
    """URL, body and headers of one delivery."""
    if latest.mode == RAW:
        url = f"{puppet.endpoint}/callback"
        if latest.query:
            url += "?" + latest.query
        body = (latest.body or "").encode()
        content_type = "application/xml"
    else:
        url = f"{puppet.endpoint}/callback/decrypted"
        body = json.dumps({"token": latest.token, "openKfId": puppet.open_kfid}).encode()
        content_type = "application/json"
    headers = webhooks.headers(puppet.webhook_secret, latest.event_id, body)
    headers["content-type"] = content_type
    return url, body, headers


async def deliver(http: httpx.AsyncClient, puppet: Puppet, latest: Latest, timeout: float) -> None:
    url, body, headers = request_for(puppet, latest)
    try:
        response = await http.post(url, content=body, headers=headers, timeout=timeout)
    except (httpx.TimeoutException, httpx.NetworkError) as exc:
        raise PuppetUnreachable(f"{type(exc).__name__}") from None
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"HTTP {response.status_code}: {response.text[:200]!r}")


async def probe(http: httpx.AsyncClient, puppet: Puppet, timeout: float = 3.0) -> bool:
    """Is anything answering HTTP at the puppet's callback URL? (Any status counts as alive.)"""
    try:
        await http.get(f"{puppet.endpoint}/callback", timeout=timeout)
    except httpx.HTTPError:
        return False
    return True
