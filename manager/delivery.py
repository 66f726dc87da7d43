"""The wire format of a dispatch to a puppet, exactly as Node puppets expect it, plus signatures.

* a callback that came in encrypted goes to ``{endpoint}/callback`` as the original XML with the
  original query string (the puppet verifies and decrypts it itself);
* a decrypted one goes to ``{endpoint}/callback/decrypted`` as ``{"token", "openKfId"}``.

Every delivery also carries Standard Webhooks headers signed with the puppet's own secret (issued at
registration); Node puppets ignore them, ours verify them. ``webhook-id`` is the stable event id.
"""

from __future__ import annotations

import json

from manager.mailbox import RAW, Latest
from manager.puppets import Puppet
from wxkf import webhooks
from wxkf.outbound import Outbound


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


async def deliver(http: Outbound, puppet: Puppet, latest: Latest, timeout: float) -> None:
    """Raises :class:`~wxkf.outbound.Unreachable` (the puppet is down) or
    :class:`~wxkf.delivery.DeliveryError` (it answered, but not with a 2xx)."""
    url, body, headers = request_for(puppet, latest)
    await http.post(url, body, headers, timeout)


async def probe(http: Outbound, puppet: Puppet, timeout: float = 3.0) -> bool:
    """Is anything answering HTTP at the puppet's callback URL? (Any status counts as alive.)"""
    return await http.reachable(f"{puppet.endpoint}/callback", timeout)
