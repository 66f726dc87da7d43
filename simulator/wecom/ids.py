"""Random identifiers shaped like WeCom's (prefixes, alphabets, lengths), so code that validates or
logs them sees realistic values."""

from __future__ import annotations

import base64
import secrets
import string
import uuid

ALNUM = string.ascii_letters + string.digits


def alnum(length: int) -> str:
    """``length`` letters and digits, uniformly random: bytes of one ``os.urandom`` call below the
    largest multiple of 62 (a call per character was a tenth of the simulator's CPU under load)."""
    chars: list[str] = []
    while len(chars) < length:
        limit = len(ALNUM) * (256 // len(ALNUM))
        chars.extend(ALNUM[byte % len(ALNUM)] for byte in secrets.token_bytes(length + 8) if byte < limit)
    return "".join(chars[:length])


def corp_id() -> str:
    return "ww" + secrets.token_hex(8)


def secret() -> str:
    return secrets.token_urlsafe(32)[:43]


def callback_token() -> str:
    """An app's callback Token (WeCom allows up to 32 letters and digits)."""
    return alnum(32)


def encoding_aes_key() -> str:
    """43 characters of base64 that decode to 32 bytes."""
    return base64.b64encode(secrets.token_bytes(32)).decode()[:43]


def access_token() -> str:
    return secrets.token_urlsafe(96)


def open_kfid() -> str:
    return "wk" + alnum(30)


def external_userid() -> str:
    return "wm" + alnum(30)


def msgid() -> str:
    return alnum(32)


def msg_token() -> str:
    """The ``Token`` of a kf callback, like WeCom's ``ENCApHxnGDNAVNY4AaSJKj4Tb5mwsEMzxhFmHVGcra996NR``."""
    return "ENC" + alnum(44)


def event_code() -> str:
    return secrets.token_urlsafe(32)


def media_id() -> str:
    return "3" + alnum(63)


def robot_key() -> str:
    return str(uuid.uuid4())


def nonce() -> str:
    return str(secrets.randbelow(10**10)).zfill(10)
