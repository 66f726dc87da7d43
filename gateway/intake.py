"""Turn one HTTP callback into a verified, decrypted :class:`CallbackEvent`, or a precise
:class:`~wxkf.http.Refusal`.

Pure logic with no I/O besides the registry lookup, so the HTTP route stays a thin shell and every
rejection reason is testable on its own. Nothing is stored for a rejected callback.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.registry import AppRegistry, CorpApp
from wecom.crypto import CryptoError, ReceiveIdError, SignatureError
from wecom.models import EventError, KfMsgOrEvent, parse_event
from wecom.xml import XMLError, parse_xml
from wxkf.http import Refusal

KF_EVENT = "kf_msg_or_event"
QUERY_PARAMS = ("msg_signature", "timestamp", "nonce")


@dataclass(frozen=True, slots=True)
class CallbackEvent:
    """One decrypted callback, ready to persist. ``id`` is stable across WeCom's retries."""

    id: str
    corp_id: str
    app: str
    event_type: str
    open_kf_id: str | None
    token: str | None = field(repr=False)
    fields: dict[str, Any] = field(repr=False)
    body: str = field(repr=False)
    query: str = field(repr=False)

    @property
    def is_kf(self) -> bool:
        return self.event_type == KF_EVENT


def event_id(app: CorpApp, plaintext: bytes) -> str:
    """Same decrypted content for the same app -> same id, so WeCom's retries dedupe on insert."""
    return hashlib.sha256(app.key.encode() + b"\n" + plaintext).hexdigest()[:32]


def require_query(query: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, ...]:
    missing = [name for name in names if not query.get(name)]
    if missing:
        raise Refusal(400, "missing_params", f"missing query parameter(s): {', '.join(missing)}")
    values = tuple(query[name] for name in names)
    if any(len(value) > 512 for value in values):
        raise Refusal(400, "bad_params", "query parameter too long")
    return values


async def find_app(registry: AppRegistry, corp_id: str, app_name: str | None) -> CorpApp:
    app = await registry.resolve(corp_id, app_name)
    if app is None:
        what = f"app {app_name!r} of corp {corp_id!r}" if app_name else f"corp {corp_id!r}"
        raise Refusal(404, "unknown_app", f"no registered {what}")
    return app


async def _verified(
    registry: AppRegistry, app: CorpApp, signature: str, timestamp: str, nonce: str, encrypt: str
) -> CorpApp:
    """Verify the signature; on failure refresh the corp once (a rotated token) and retry."""
    try:
        app.crypt.verify(signature, timestamp, nonce, encrypt)
        return app
    except SignatureError:
        if await registry.refresh(app.corp_id):
            fresh = registry.lookup(app.corp_id, app.name)
            if fresh is not None and fresh is not app:
                try:
                    fresh.crypt.verify(signature, timestamp, nonce, encrypt)
                    return fresh
                except SignatureError:
                    pass
        raise Refusal(403, "bad_signature", "msg_signature does not match") from None


def _decrypt(app: CorpApp, encrypt: str) -> bytes:
    try:
        return app.crypt.decrypt(encrypt)
    except ReceiveIdError:
        raise Refusal(403, "wrong_receiveid", "payload was encrypted for another corp") from None
    except CryptoError as exc:
        raise Refusal(400, exc.reason, f"cannot decrypt payload: {exc}") from None


async def verify_url(
    registry: AppRegistry, corp_id: str, app_name: str | None, query: Mapping[str, str]
) -> bytes:
    """WeCom's URL verification: return the echostr plaintext to answer."""
    app = await find_app(registry, corp_id, app_name)
    signature, timestamp, nonce, echostr = require_query(query, (*QUERY_PARAMS, "echostr"))
    app = await _verified(registry, app, signature, timestamp, nonce, echostr)
    return _decrypt(app, echostr)


async def open_callback(
    registry: AppRegistry,
    corp_id: str,
    app_name: str | None,
    query: Mapping[str, str],
    raw_query: str,
    body: bytes,
) -> CallbackEvent:
    """Verify, decrypt and parse a POSTed callback."""
    app = await find_app(registry, corp_id, app_name)
    signature, timestamp, nonce = require_query(query, QUERY_PARAMS)
    try:
        envelope = parse_xml(body)
    except XMLError as exc:
        raise Refusal(400, f"xml_{exc.reason}", f"bad callback XML: {exc}") from None
    encrypt = envelope.get("Encrypt")
    if not isinstance(encrypt, str) or not encrypt:
        raise Refusal(400, "missing_encrypt", "callback XML has no Encrypt element")
    app = await _verified(registry, app, signature, timestamp, nonce, encrypt)
    plaintext = _decrypt(app, encrypt)
    try:
        event = parse_event(plaintext)
    except (XMLError, EventError) as exc:
        raise Refusal(400, "bad_event", f"decrypted payload is not a valid event: {exc}") from None
    if isinstance(event, KfMsgOrEvent):
        return CallbackEvent(
            id=event_id(app, plaintext),
            corp_id=app.corp_id,
            app=app.name,
            event_type=KF_EVENT,
            open_kf_id=event.open_kf_id,
            token=event.token,
            fields={},
            body=body.decode("utf-8", "replace"),
            query=raw_query,
        )
    return CallbackEvent(
        id=event_id(app, plaintext),
        corp_id=app.corp_id,
        app=app.name,
        event_type=event.event or event.msg_type or "unknown",
        open_kf_id=None,
        token=None,
        fields=event.fields,
        body=body.decode("utf-8", "replace"),
        query=raw_query,
    )
