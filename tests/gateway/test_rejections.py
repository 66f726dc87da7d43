"""Every way a callback can be wrong: an exact 4xx naming the reason, counted, and no trace left behind.

A refused callback must never be stored or forwarded (WeCom retries real ones; anything else is an
attacker or a misconfiguration), must never cost a 5xx, and must not leak the app's secrets into the
logs while being refused. Attacks are also tried *inside* the encrypted payload, where they arrive
with a valid signature and only the XML parser stands in the way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

import pytest
from Crypto.Cipher import AES
from prometheus_client import REGISTRY

from gateway.inbox import COLLECTION as INBOX
from gateway.inbox import UNROUTED
from tests.gateway.conftest import RunningGateway
from tests.support.wecom_callbacks import CorpAppKeys, kf_event_xml, signed_echo, signed_post
from wecom.crypto import MsgCrypt, decode_aes_key, pkcs7_pad
from wecom.xml import build_xml, callback_body, parse_xml
from wxkf.runtime import Runtime

CORP_SECRET = "corp-secret-123"  # what the gw fixture registers
MAX_BODY = 64 * 1024  # GatewayConfig's default, which the gw fixture keeps

XXE = (
    b'<?xml version="1.0"?>\n<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    b"<xml><ToUserName>&xxe;</ToUserName><Encrypt>&xxe;</Encrypt><MsgType>event</MsgType>"
    b"<Event>kf_msg_or_event</Event><Token>&xxe;</Token><OpenKfId>&xxe;</OpenKfId></xml>"
)
BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE xml [\n<!ENTITY lol "lol">\n'
    + b"".join(
        f'<!ENTITY lol{n} "{f"&lol{n - 1};" * 10 if n > 1 else "&lol;" * 10}">\n'.encode()
        for n in range(1, 10)
    )
    + b"]>\n<xml><ToUserName>&lol9;</ToUserName><Encrypt>&lol9;</Encrypt><Token>&lol9;</Token></xml>"
)
# The same XXE in UTF-16: the raw-bytes pre-check cannot see "<!DOCTYPE" here, the parsed docinfo must.
XXE_UTF16 = XXE.decode().replace('version="1.0"', 'version="1.0" encoding="UTF-16"').encode("utf-16")


@dataclass(frozen=True)
class Attempt:
    """One HTTP request at the gateway. ``body=None`` means the GET of URL verification."""

    path: str
    query: str
    body: bytes | None = None
    chunked: bool = False


@dataclass(frozen=True)
class Bad:
    status: int
    reason: str
    attempt: Callable[[CorpAppKeys], Attempt]


def home(keys: CorpAppKeys) -> str:
    return f"/callback/{keys.corp_id}"


def valid_post(keys: CorpAppKeys) -> tuple[dict[str, str], bytes]:
    query, body = signed_post(keys, kf_event_xml(keys.corp_id, "wkAAA", "sync-token"))
    return dict(parse_qsl(query)), body


def with_query(keys: CorpAppKeys, **changes: str | None) -> Attempt:
    """A valid kf callback with some query parameters replaced (or removed, for ``None``)."""
    query, body = valid_post(keys)
    for name, value in changes.items():
        if value is None:
            del query[name]
        else:
            query[name] = value
    return Attempt(home(keys), urlencode(query), body)


def signed_envelope(keys: CorpAppKeys, encrypt: str) -> Attempt:
    """``encrypt`` correctly signed with the app's token, so the request gets past the signature."""
    ts, nonce = "1700000000", secrets.token_hex(5)
    query = urlencode({"msg_signature": keys.crypt.sign(ts, nonce, encrypt), "timestamp": ts, "nonce": nonce})
    return Attempt(home(keys), query, callback_body(keys.corp_id, encrypt).encode())


def signed_by(signer: CorpAppKeys, keys: CorpAppKeys) -> Attempt:
    """A genuine callback for ``keys``, signed with ``signer``'s token instead of its own."""
    query, body = valid_post(keys)
    encrypt = parse_xml(body)["Encrypt"]
    query["msg_signature"] = signer.crypt.sign(query["timestamp"], query["nonce"], encrypt)
    return Attempt(home(keys), urlencode(query), body)


def sealed(plaintext: bytes | str, receive_id: str | None = None) -> Callable[[CorpAppKeys], Attempt]:
    """A callback of ``plaintext`` encrypted with the right key (for ``receive_id``) and signed."""

    def attempt(keys: CorpAppKeys) -> Attempt:
        crypt = MsgCrypt(keys.token, keys.aes_key, receive_id or keys.corp_id)
        return signed_envelope(keys, crypt.encrypt(plaintext))

    return attempt


def raw_cipher(plain: bytes) -> Callable[[CorpAppKeys], Attempt]:
    """A signed callback whose ciphertext decrypts (with the right key) to exactly ``plain``."""

    def attempt(keys: CorpAppKeys) -> Attempt:
        key = decode_aes_key(keys.aes_key)
        cipher = AES.new(key, AES.MODE_CBC, key[:16])
        return signed_envelope(keys, base64.b64encode(cipher.encrypt(plain)).decode())

    return attempt


def signed_body(body: bytes) -> Callable[[CorpAppKeys], Attempt]:
    """``body`` posted with a well-formed (but necessarily meaningless) signed query."""

    def attempt(keys: CorpAppKeys) -> Attempt:
        query, _ = valid_post(keys)
        return Attempt(home(keys), urlencode(query), body)

    return attempt


def event_without(name: str) -> bytes:
    fields: dict[str, str | int] = {
        "ToUserName": "placeholder",
        "CreateTime": 1700000000,
        "MsgType": "event",
        "Event": "kf_msg_or_event",
        "Token": "sync-token",
        "OpenKfId": "wkAAA",
    }
    del fields[name]
    return build_xml(fields).encode()


def oversized(*, chunked: bool) -> Callable[[CorpAppKeys], Attempt]:
    def attempt(keys: CorpAppKeys) -> Attempt:
        query, _ = valid_post(keys)
        padding = b"<Pad>" + b"x" * (MAX_BODY + 1) + b"</Pad>"
        body = callback_body(keys.corp_id, "AAAA").encode().replace(b"</xml>", padding + b"</xml>")
        return Attempt(home(keys), urlencode(query), body, chunked=chunked)

    return attempt


def verification(**changes: str | None) -> Callable[[CorpAppKeys], Attempt]:
    def attempt(keys: CorpAppKeys) -> Attempt:
        query = dict(parse_qsl(signed_echo(keys, "1616140317555161061")))
        for name, value in changes.items():
            if value is None:
                del query[name]
            else:
                query[name] = value
        return Attempt(home(keys), urlencode(query))

    return attempt


def kf_plain(keys: CorpAppKeys) -> bytes:
    return kf_event_xml(keys.corp_id, "wkAAA", "sync-token").encode()


def header(message: bytes) -> bytes:
    """WeCom's plaintext layout before padding (random(16) || len || message), without a receiveid."""
    return secrets.token_bytes(16) + struct.pack(">I", len(message)) + message


PASSWD_LINE = "root:x:0:0"
FORGED_SIGNATURE = "0" * 40
LONG = "9" * 513

CASES: dict[str, Bad] = {
    # -- the query string ---------------------------------------------------------------------
    "missing msg_signature": Bad(400, "missing_params", lambda k: with_query(k, msg_signature=None)),
    "missing timestamp": Bad(400, "missing_params", lambda k: with_query(k, timestamp=None)),
    "missing nonce": Bad(400, "missing_params", lambda k: with_query(k, nonce=None)),
    "empty msg_signature": Bad(400, "missing_params", lambda k: with_query(k, msg_signature="")),
    "no query at all": Bad(400, "missing_params", lambda k: Attempt(home(k), "", valid_post(k)[1])),
    "over-long msg_signature": Bad(400, "bad_params", lambda k: with_query(k, msg_signature=LONG)),
    "over-long timestamp": Bad(400, "bad_params", lambda k: with_query(k, timestamp=LONG)),
    "over-long nonce": Bad(400, "bad_params", lambda k: with_query(k, nonce=LONG)),
    "forged signature": Bad(403, "bad_signature", lambda k: with_query(k, msg_signature=FORGED_SIGNATURE)),
    "signature over another timestamp": Bad(403, "bad_signature", lambda k: with_query(k, timestamp="1")),
    "signed with another token": Bad(
        403, "bad_signature", lambda k: signed_by(CorpAppKeys.random(k.corp_id), k)
    ),
    # -- the path -----------------------------------------------------------------------------
    "unknown corp": Bad(
        404, "unknown_app", lambda k: Attempt("/callback/wwnobody", *signed_post(k, kf_plain(k).decode()))
    ),
    "unknown app name": Bad(
        404, "unknown_app", lambda k: Attempt(home(k) + "/nope", *signed_post(k, kf_plain(k).decode()))
    ),
    # -- the body and its envelope ------------------------------------------------------------
    "oversized body, truthful Content-Length": Bad(413, "too_large", oversized(chunked=False)),
    "oversized body, chunked without Content-Length": Bad(413, "too_large", oversized(chunked=True)),
    "empty body": Bad(400, "xml_malformed", signed_body(b"")),
    "malformed envelope": Bad(400, "xml_malformed", signed_body(b"<xml><Encrypt>abc</Encrypt>")),
    "not XML at all": Bad(400, "xml_malformed", signed_body(b'{"Encrypt": "abc"}')),
    "envelope with another root": Bad(400, "xml_bad_root", signed_body(b"<root><Encrypt>a</Encrypt></root>")),
    "envelope without Encrypt": Bad(
        400, "missing_encrypt", signed_body(b"<xml><ToUserName>ww</ToUserName></xml>")
    ),
    "envelope with empty Encrypt": Bad(
        400, "missing_encrypt", signed_body(b"<xml><Encrypt></Encrypt></xml>")
    ),
    "XXE envelope": Bad(400, "xml_doctype", signed_body(XXE)),
    "billion laughs envelope": Bad(400, "xml_doctype", signed_body(BILLION_LAUGHS)),
    "UTF-16 XXE envelope": Bad(400, "xml_doctype", signed_body(XXE_UTF16)),
    # -- the ciphertext (signed correctly, so decryption is what refuses it) ------------------
    "wrong receiveid": Bad(
        403, "wrong_receiveid", lambda k: sealed(kf_plain(k), receive_id="wwsomeoneelse")(k)
    ),
    "bad base64": Bad(400, "bad_base64", lambda k: signed_envelope(k, "not*base64!")),
    "not a whole number of AES blocks": Bad(
        400, "bad_base64", lambda k: signed_envelope(k, base64.b64encode(b"x" * 17).decode())
    ),
    "bad padding": Bad(400, "bad_padding", raw_cipher(header(b"<xml/>").ljust(63, b"z") + b"\x00")),
    "padding longer than a block": Bad(400, "bad_padding", raw_cipher(b"z" * 31 + b"\x21" * 33)),
    "length prefix beyond the plaintext": Bad(
        400,
        "bad_length",
        raw_cipher(pkcs7_pad(secrets.token_bytes(16) + struct.pack(">I", 10_000) + b"<xml/>")),
    ),
    "plaintext shorter than its header": Bad(400, "bad_length", raw_cipher(pkcs7_pad(b"0123456789"))),
    # -- the decrypted payload ----------------------------------------------------------------
    "payload is not XML": Bad(400, "bad_event", sealed(b"hello, not xml")),
    "payload is binary": Bad(400, "bad_event", sealed(bytes(range(256)))),
    "XXE payload": Bad(400, "bad_event", sealed(XXE)),
    "billion laughs payload": Bad(400, "bad_event", sealed(BILLION_LAUGHS)),
    "UTF-16 XXE payload": Bad(400, "bad_event", sealed(XXE_UTF16)),
    "kf event without Token": Bad(400, "bad_event", sealed(event_without("Token"))),
    "kf event without OpenKfId": Bad(400, "bad_event", sealed(event_without("OpenKfId"))),
    "kf event without ToUserName": Bad(400, "bad_event", sealed(event_without("ToUserName"))),
    # -- URL verification ---------------------------------------------------------------------
    "verification with forged signature": Bad(
        403, "bad_signature", verification(msg_signature=FORGED_SIGNATURE)
    ),
    "verification without echostr": Bad(400, "missing_params", verification(echostr=None)),
    "verification without nonce": Bad(400, "missing_params", verification(nonce=None)),
    "verification of unknown corp": Bad(
        404, "unknown_app", lambda k: Attempt("/callback/wwnobody", signed_echo(k, "123"))
    ),
}


def rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("wxkf_gateway_rejected_total", {"reason": reason}) or 0.0


async def stream(data: bytes, size: int = 8192) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def send(gw: RunningGateway, attempt: Attempt) -> tuple[int, str]:
    url = f"{attempt.path}?{attempt.query}" if attempt.query else attempt.path
    if attempt.body is None:
        response = await gw.http.get(url)
    else:
        content = stream(attempt.body) if attempt.chunked else attempt.body
        response = await gw.http.post(url, content=content, headers={"content-type": "text/xml"})
    return response.status_code, response.text


def assert_no_secrets(keys: CorpAppKeys, texts: list[str]) -> None:
    for text in texts:
        for secret in (keys.token, keys.aes_key, CORP_SECRET):
            assert secret not in text


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
async def test_bad_callback_is_refused_precisely_and_leaves_no_trace(
    gw: RunningGateway, runtime: Runtime, caplog: pytest.LogCaptureFixture, case: Bad
) -> None:
    caplog.set_level(logging.DEBUG)
    attempt = case.attempt(gw.keys)
    before = rejected(case.reason)

    status, text = await send(gw, attempt)

    assert status == case.status, text
    assert text.startswith(f"{case.reason}: "), text
    assert rejected(case.reason) == before + 1
    assert await runtime.db[INBOX].count_documents({}) == 0
    assert gw.gateway.forwarder.backlog == 0
    assert gw.listener.attempts == 0
    assert PASSWD_LINE not in text + caplog.text  # the XXE never read /etc/passwd
    # the refusal was logged, and neither the log nor the answer carries a secret of the app
    assert any(case.reason in record.getMessage() for record in caplog.records)
    assert_no_secrets(gw.keys, [text, caplog.text, *(r.getMessage() for r in caplog.records)])


async def test_content_length_that_understates_a_chunked_body_is_still_cut_off(
    gw: RunningGateway, runtime: Runtime
) -> None:
    """``Content-Length: 10`` beside a chunked body of 96 KiB: the streamed size is what counts.

    httpx will not send such a request, so this one is written on a raw socket.
    """
    before = rejected("too_large")
    query, _ = valid_post(gw.keys)
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"POST {home(gw.keys)}?{urlencode(query)} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
        "Content-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"x" * 8192
    writer.write(head.encode() + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 12 + b"0\r\n\r\n")
    with contextlib.suppress(ConnectionError):  # refusing early may close the socket mid-write
        await writer.drain()
    async with asyncio.timeout(10):
        response = await reader.read()  # Connection: close, so the answer ends at EOF
    writer.close()

    status_line, _, rest = response.partition(b"\r\n")
    status = status_line.split()[1]
    if status == b"400":  # httptools (uvicorn[standard]) refuses the ambiguous framing itself: fine too
        assert rejected("too_large") == before
    else:  # h11 lets chunked win; the streaming cap cuts the body off
        assert status == b"413"
        assert rest.partition(b"\r\n\r\n")[2].startswith(b"too_large: ")
        assert rejected("too_large") == before + 1
    assert await runtime.db[INBOX].count_documents({}) == 0


NON_KF_EVENTS = {
    "change_contact": {
        "MsgType": "event",
        "Event": "change_contact",
        "ChangeType": "create_user",
        "UserID": "zhangsan",
    },
    "text message": {"MsgType": "text", "Content": "hello", "MsgId": "4561255354251345929", "AgentID": "1"},
    "unknown event": {"MsgType": "event", "Event": "something_new_from_wecom"},
    # CreateTime values int() refuses although str.isdigit() accepts them (once a 500): kept, not parsed
    "superscript CreateTime": {"MsgType": "event", "Event": "change_contact", "CreateTime": "²"},
    "5000-digit CreateTime": {"MsgType": "event", "Event": "change_contact", "CreateTime": "1" * 5000},
}


@pytest.mark.parametrize("fields", list(NON_KF_EVENTS.values()), ids=list(NON_KF_EVENTS))
async def test_valid_non_kf_callback_is_accepted_and_stored_unrouted(
    gw: RunningGateway, runtime: Runtime, fields: dict[str, str]
) -> None:
    plaintext = build_xml(
        {"ToUserName": gw.keys.corp_id, "FromUserName": "sys", "CreateTime": 1700000000, **fields}
    )
    query, body = signed_post(gw.keys, plaintext)

    response = await gw.http.post(
        f"{home(gw.keys)}?{query}", content=body, headers={"content-type": "text/xml"}
    )

    assert response.status_code == 200
    assert response.text == "success"
    [doc] = await runtime.db[INBOX].find({}).to_list()
    assert doc["state"] == UNROUTED
    assert doc["targets"] == {}
    assert doc["event_type"] == fields.get("Event", fields["MsgType"])
    assert doc["fields"]["FromUserName"] == "sys"
    assert doc["fields"]["CreateTime"] == str(fields.get("CreateTime", 1700000000))
    assert gw.gateway.forwarder.backlog == 0
    assert gw.listener.attempts == 0
