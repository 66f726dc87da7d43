"""The wire format of a dispatch to a puppet, exactly as Node puppets expect it.

* a callback that came in encrypted goes to ``{endpoint}/callback`` as the original XML with the
  original query string (the puppet verifies and decrypts it itself);
* a decrypted one goes to ``{endpoint}/callback/decrypted`` as ``{"token", "openKfId"}``.

Every delivery is also signed per Standard Webhooks with the puppet's own secret (issued at
registration) by :class:`~wxkf.delivery.DeliveryClient`; Node puppets ignore the headers, ours verify
them. ``webhook-id`` is the stable event id.
"""

from __future__ import annotations

import json

from manager.mailbox import RAW, Latest
from manager.puppets import Puppet
from wxkf.delivery import DeliveryClient


def request_for(puppet: Puppet, latest: Latest) -> tuple[str, bytes, str]:
    """URL, body and content type of one delivery."""
    if latest.mode == RAW:
        url = f"{puppet.endpoint}/callback"
        if latest.query:
            url += "?" + latest.query
        return url, (latest.body or "").encode(), "application/xml"
    body = json.dumps({"token": latest.token, "openKfId": puppet.open_kfid}).encode()
    return f"{puppet.endpoint}/callback/decrypted", body, "application/json"


async def deliver(http: DeliveryClient, puppet: Puppet, latest: Latest, timeout: float) -> None:
    """Raises :class:`~wxkf.delivery.Unreachable` (the puppet is down) or
    :class:`~wxkf.delivery.DeliveryError` (it answered, but not with a 2xx)."""
    url, body, content_type = request_for(puppet, latest)
    await http.post(
        url,
        body,
        content_type=content_type,
        event_id=latest.event_id,
        secret=puppet.webhook_secret,
        timeout=timeout,
    )


async def probe(http: DeliveryClient, puppet: Puppet, timeout: float = 3.0) -> bool:
    """Is anything answering HTTP at the puppet's callback URL? (Any status counts as alive.)"""
    return await http.reachable(f"{puppet.endpoint}/callback", timeout)
