"""Standard Webhooks signing for every outbound delivery (subscriptions, puppet dispatch).

A receiver verifies ``webhook-signature`` = ``v1,`` + base64(HMAC-SHA256(key, f"{id}.{ts}.{body}"))
with the secret it was issued (``whsec_`` + base64 key). Several space-separated signatures may be
sent during a key rotation; any one matching is enough.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 5 * 60


class WebhookVerificationError(ValueError):
    """The headers are missing, stale, or no signature matches."""


def generate_secret(num_bytes: int = 32) -> str:
    if not 24 <= num_bytes <= 64:
        raise ValueError("a Standard Webhooks secret holds 24..64 bytes")
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(num_bytes)).decode()


def _key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("webhook secret is not base64 after its whsec_ prefix") from exc


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return ``v1,<base64 signature>`` for one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, msg_id: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
    """The three headers a delivery carries."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
    }


def verify(
    secret: str,
    received: Mapping[str, str],
    body: bytes,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    """Raise :class:`WebhookVerificationError` unless one signature matches and the timestamp is fresh."""
    msg_id = received.get("webhook-id")
    ts_text = received.get("webhook-timestamp")
    sig_header = received.get("webhook-signature")
    if not msg_id or not ts_text or not sig_header:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        ts = int(ts_text)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    current = int(time.time() if now is None else now)
    if abs(current - ts) > tolerance:  # ints, not floats: a 400-digit timestamp cannot overflow
        raise WebhookVerificationError("webhook-timestamp outside the tolerance window")
    expected = sign(secret, msg_id, ts, body).encode()
    for candidate in sig_header.split():
        if hmac.compare_digest(expected, candidate.encode()):
            return
    raise WebhookVerificationError("no matching signature")
