"""Build callbacks exactly as WeCom sends them, for tests and benchmarks."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from wecom.crypto import MsgCrypt
from wecom.xml import build_xml, callback_body


def new_aes_key() -> str:
    """A random 43-character EncodingAESKey."""
    import base64

    return base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")


@dataclass(frozen=True)
class CorpAppKeys:
    corp_id: str
    token: str
    aes_key: str

    @classmethod
    def random(cls, corp_id: str | None = None) -> CorpAppKeys:
        return cls(corp_id or "ww" + secrets.token_hex(8), secrets.token_hex(8), new_aes_key())

    @property
    def crypt(self) -> MsgCrypt:
        return MsgCrypt(self.token, self.aes_key, self.corp_id)


def kf_event_xml(corp_id: str, open_kfid: str, token: str, create_time: int | None = None) -> str:
    return build_xml(
        {
            "ToUserName": corp_id,
            "CreateTime": create_time or int(time.time()),
            "MsgType": "event",
            "Event": "kf_msg_or_event",
            "Token": token,
            "OpenKfId": open_kfid,
        }
    )


def signed_post(keys: CorpAppKeys, plaintext: str, *, timestamp: str | None = None) -> tuple[str, bytes]:
    """``(query string, body)`` of an encrypted callback POST for ``plaintext``."""
    ts = timestamp or str(int(time.time()))
    nonce = secrets.token_hex(5)
    encrypt, signature = keys.crypt.seal(plaintext, ts, nonce)
    query = urlencode({"msg_signature": signature, "timestamp": ts, "nonce": nonce})
    return query, callback_body(keys.corp_id, encrypt, 1000002).encode()


def signed_echo(keys: CorpAppKeys, echo: str) -> str:
    """Query string of WeCom's URL-verification GET for plaintext ``echo``."""
    ts = str(int(time.time()))
    nonce = secrets.token_hex(5)
    echostr, signature = keys.crypt.seal(echo, ts, nonce)
    return urlencode({"msg_signature": signature, "timestamp": ts, "nonce": nonce, "echostr": echostr})
