"""The wire format of a dispatch to a puppet, exactly as Node puppets expect it.

* a callback that came in encrypted goes to ``{endpoint}/callback`` as the original XML with the
  original query string (the puppet verifies and decrypts it itself);
* a decrypted one goes to ``{endpoint}/callback/decrypted`` as ``{"token", "openKfId"}``.

Every delivery is also signed per Standard Webhooks with the puppet's own secret (issued at
registration) by :class:`~wxkf.delivery.DeliveryClient`; Node puppets ignore the headers, ours verify
them. ``webhook-id`` is the stable event id.

A puppet registered with the endpoint :data:`~manager.sockets.SOCKET_ENDPOINT` takes the same path,
query, headers and body as a frame on its own WebSocket (:mod:`manager.sockets`) instead.
"""

from __future__ import annotations

import json

from manager.mailbox import RAW, Latest
from manager.puppets import Puppet
from manager.sockets import SOCKET_ENDPOINT, NoSocketHere, PuppetSockets
from wxkf.delivery import DeliveryClient


def content_for(puppet: Puppet, latest: Latest) -> tuple[str, str, bytes, str]:
    """Path (under the endpoint), query, body and content type of one delivery."""
    if latest.mode == RAW:
        return "/callback", latest.query or "", (latest.body or "").encode(), "application/xml"
    body = json.dumps({"token": latest.token, "openKfId": puppet.open_kfid}).encode()
    return "/callback/decrypted", "", body, "application/json"


def request_for(puppet: Puppet, latest: Latest) -> tuple[str, bytes, str]:
    """URL, body and content type of one delivery."""
    path, query, body, content_type = content_for(puppet, latest)
    url = f"{puppet.endpoint}{path}" + (f"?{query}" if query else "")
    return url, body, content_type


async def deliver(
    http: DeliveryClient,
    puppet: Puppet,
    latest: Latest,
    timeout: float,
    sockets: PuppetSockets | None = None,
) -> None:
    """Raises :class:`~wxkf.delivery.Unreachable` (the puppet is down; :class:`NoSocketHere` for a
    socket puppet with no connection to this process) or :class:`~wxkf.delivery.DeliveryError` (it
    answered, but not with a 2xx)."""
    if puppet.endpoint == SOCKET_ENDPOINT:
        if sockets is None:
            raise NoSocketHere("this process serves no puppet sockets")
        path, query, body, content_type = content_for(puppet, latest)
        await sockets.deliver(
            puppet.key,
            path=path,
            query=query,
            body=body,
            content_type=content_type,
            event_id=latest.event_id,
            secret=puppet.webhook_secret,
            timeout=timeout,
        )
        return
    url, body, content_type = request_for(puppet, latest)
    await http.post(
        url,
        body,
        content_type=content_type,
        event_id=latest.event_id,
        secret=puppet.webhook_secret,
        timeout=timeout,
    )


async def probe(
    http: DeliveryClient, puppet: Puppet, timeout: float = 3.0, sockets: PuppetSockets | None = None
) -> bool:
    """Is anything answering HTTP at the puppet's callback URL? (Any status counts as alive.) For a
    socket puppet: is its socket open to this process?"""
    if puppet.endpoint == SOCKET_ENDPOINT:
        return sockets is not None and sockets.connected(puppet.key)
    return await http.reachable(f"{puppet.endpoint}/callback", timeout)
