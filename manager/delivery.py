"""The wire format of a dispatch to a puppet, exactly as Node puppets expect it.

* a callback that came in encrypted goes to ``{endpoint}/callback`` as the original XML with the
  original query string (the puppet verifies and decrypts it itself);
* a decrypted one goes to ``{endpoint}/callback/decrypted`` as ``{"token", "openKfId"}``.

Every delivery is also signed per Standard Webhooks with the puppet's own secret (issued at
registration) by :class:`~wxkf.delivery.DeliveryClient`; Node puppets ignore the headers, ours verify
them. ``webhook-id`` is the stable event id.

A puppet registered with the endpoint :data:`~manager.sockets.SOCKET_ENDPOINT` takes the same path,
query, headers and body as a frame on its own WebSocket (:mod:`manager.sockets`) instead.

**A puppet that is stopping** answers ``503 stopping`` (over HTTP, or as its socket ack) until it
deregisters: it is going away, not failing. That answer is :class:`PuppetStopping`, an
:class:`~wxkf.delivery.Unreachable`, so the dispatcher marks the puppet offline and keeps the work in
the account's mailbox without counting a failed attempt (no backoff, no dead letter); the probe
counts a stopping puppet as down, and the account flows when the puppet, or its successor, registers.

**A registration that went stale**: the process at the endpoint no longer serves the account (it was
restarted with a config without it) and answers ``404 account_not_served``. That answer is
:class:`AccountNotServed`, also an ``Unreachable``: the dispatcher marks that registration offline
(only if it is still the one the delivery went to) without a probe, since a probe asks the process,
which is alive, not the account; no failed attempt is counted. The account's work waits in its
mailbox until a puppet registers the account (or proves it over a socket), then flows.
"""

from __future__ import annotations

import json

from manager.mailbox import RAW, Latest
from manager.puppets import Puppet
from manager.sockets import SOCKET_ENDPOINT, NoSocketHere, PuppetSockets
from wxkf.delivery import DeliveryClient, DeliveryError, Unreachable

#: what a stopping puppet answers, with status 503 (docs/compat.md)
STOPPING = "stopping"
#: what a puppet answers, with status 404, to a delivery for an account it does not serve
NOT_SERVED = "account_not_served"


class PuppetStopping(Unreachable):
    """The puppet answered ``503 stopping``: it is going away (and deregisters soon)."""


class AccountNotServed(Unreachable):
    """The puppet answered ``404 account_not_served``: the registration delivered to is stale."""


def is_stopping(status: int | None, answer: str) -> bool:
    return status == 503 and answer.strip() == STOPPING


def is_not_served(status: int | None, answer: str) -> bool:
    return status == 404 and answer.strip() == NOT_SERVED


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
    answered, but not with a 2xx; :class:`PuppetStopping`, an ``Unreachable``, for ``503 stopping``,
    and :class:`AccountNotServed`, another, for ``404 account_not_served``)."""
    try:
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
    except DeliveryError as exc:
        if isinstance(exc, Unreachable):
            raise
        if is_not_served(exc.status, exc.answer):
            raise AccountNotServed(
                "the puppet does not serve this account (404 account_not_served)"
            ) from None
        if not is_stopping(exc.status, exc.answer):
            raise
        if sockets is not None and puppet.endpoint == SOCKET_ENDPOINT:
            sockets.stopping(puppet.key)
        raise PuppetStopping("the puppet is stopping (503 stopping); it deregisters soon") from None


async def probe(
    http: DeliveryClient, puppet: Puppet, timeout: float = 3.0, sockets: PuppetSockets | None = None
) -> bool:
    """Is anything answering HTTP at the puppet's callback URL? (Any status counts as alive, but
    ``503 stopping``.) For a socket puppet: is its socket open to this process, and not stopping?"""
    if puppet.endpoint == SOCKET_ENDPOINT:
        return sockets is not None and sockets.connected(puppet.key)
    answer = await http.get(f"{puppet.endpoint}/callback", timeout)
    return answer is not None and not is_stopping(*answer)
