"""WXBizMsgCrypt: the public vectors, round trips, and one test per way a callback can be forged or broken."""

from __future__ import annotations

import base64
import struct

import pytest
from Crypto.Cipher import AES
from hypothesis import given
from hypothesis import strategies as st

from wecom.crypto import (
    AESKeyError,
    Base64Error,
    LengthError,
    MsgCrypt,
    PaddingError,
    ReceiveIdError,
    SignatureError,
    decode_aes_key,
    pkcs7_pad,
    signature,
)
from wecom.models import RawEvent, parse_event

# -- WeCom, official docs example ---------------------------------------------------------------
DOCS = MsgCrypt("QDG6eK", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "wx5823bf96d3bd56c7")
DOCS_ECHOSTR = "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ=="
DOCS_ENCRYPT = (
    "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJ"
    "Ts3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2h"
    "gf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4E"
    "hzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2Y"
    "oyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q=="
)
DOCS_PLAIN = (
    b"<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>\n"
    b"<FromUserName><![CDATA[mycreate]]></FromUserName>\n<CreateTime>1409659813</CreateTime>\n"
    b"<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[hello]]></Content>\n"
    b"<MsgId>4561255354251345929</MsgId>\n<AgentID>218</AgentID>\n</xml>"
)

# -- WeCom, deterministic encryption -----------------------------------------------------------
FIXED = MsgCrypt("123456", "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR", "wx49f0ab532d5d035a")
FIXED_PLAIN = (
    "<xml>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[test]]></Content>\n"
    "<FromUserName><![CDATA[wx49f0ab532d5d035a]]></FromUserName>\n<ToUserName><![CDATA[messense]]></ToUserName>\n"
    "<AgentID>1</AgentID>\n<CreateTime>1411525903</CreateTime>\n</xml>"
)
FIXED_ENCRYPT = (
    "9s4gMv99m88kKTh/H8IdkOiMg6bisoy3ypwy9H4hvSPe9nsGaqyw5hhSjdYbcrKk+j3nba4HMOTzHrluLBYqxgNcBqGsL8GqxlhZgURnAtO"
    "bvesEl5nZ+uBE8bviY0LWke8Zy9V/QYKxNV2FqllNXcfmstttyIkMKCCmVbCFM2JTF5wY0nFhHZSjPUL2Q1qvSUCUld+/WIXrx0oyKQmpB6o8"
    "NRrrNrsDf03oxI1p9FxUgMnwKKZeOA/uu+2IEvEBtb7muXsVbwbgX05UPPJvFurDXafG0RQyPR+mf1nDnAtQmmNOuiR5MIkdQ39xn1vWwi1O5"
    "oazPoQJz0nTYjxxEE8kv3kFxtAGVRe3ypD3WeK2XeFYFMNMpatF9XiKzHo3"
)

# -- DingTalk callback, official sample --------------------------------------------------------
DING = MsgCrypt("mryue", "Yue0EfdN5900c1ce5cf6A152c63DDe1808a60c5ecd7", "ding6ccabc44d2c8d38b")
DING_ENCRYPT = (
    "0vJiX6vliEpwG3U45CtXqi+m8PXbQRARJ8p8BbDuD1EMTDf0jKpQ79QS93qEk7XHpP6u+oTTrd15NRPvNvmBKyDCYxxOK+HZeKju4yhELOFc"
    "hzNukR+t8SB/qk4ROMu3"
)


def test_docs_url_verification() -> None:
    echo = DOCS.verify_url(
        "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3", "1409659589", "263014780", DOCS_ECHOSTR
    )
    assert echo == b"1616140317555161061"


def test_docs_message_callback() -> None:
    plain = DOCS.open("477715d11cdb4164915debcba66cb864d751f3e6", "1409659813", "1372623149", DOCS_ENCRYPT)
    assert plain == DOCS_PLAIN
    event = parse_event(plain)
    assert isinstance(event, RawEvent)
    assert (event.msg_type, event.create_time, event.fields["Content"]) == ("text", 1409659813, "hello")


def test_deterministic_encryption_matches_vector() -> None:
    encrypt = FIXED.encrypt(FIXED_PLAIN, random=b"1234567890123456")
    assert encrypt == FIXED_ENCRYPT
    assert FIXED.sign("1411525903", "461056294", encrypt) == "407518b7649e86ef23978113f92d27afa9296533"
    assert FIXED.open("407518b7649e86ef23978113f92d27afa9296533", "1411525903", "461056294", encrypt) == (
        FIXED_PLAIN.encode()
    )


def test_dingtalk_check_url() -> None:
    plain = DING.open("03044561471240d4a14bb09372dfcfd4fd0e40cb", "1608001896814", "WL4PK6yA", DING_ENCRYPT)
    assert plain == b'{"EventType":"check_url"}'


def test_signature_is_a_plain_string_sort() -> None:
    # "1" < "A" < "a": numeric strings sort before letters, whatever their value.
    assert signature("b", "10", "9", "A") == signature("A", "9", "b", "10")


# -- round trips ---------------------------------------------------------------------------------


@given(message=st.binary(max_size=4096), prefix=st.binary(min_size=16, max_size=16))
def test_round_trip_any_bytes(message: bytes, prefix: bytes) -> None:
    encrypt = FIXED.encrypt(message, random=prefix)
    assert len(base64.b64decode(encrypt)) % 32 == 0
    assert FIXED.decrypt(encrypt) == message


@given(
    text=st.text(max_size=1024),
    timestamp=st.integers(0, 2**40).map(str),
    nonce=st.text("0123456789", min_size=1),
)
def test_seal_then_open_unicode(text: str, timestamp: str, nonce: str) -> None:
    encrypt, msg_signature = FIXED.seal(text, timestamp, nonce)
    assert FIXED.open(msg_signature, timestamp, nonce, encrypt).decode() == text


@pytest.mark.parametrize(
    "message",
    [b"", "ünïcödé ✓ 客服 🙂".encode(), bytes(range(256)) * 4096],
    ids=["empty", "unicode", "1MiB"],
)
def test_round_trip_edge_sizes(message: bytes) -> None:
    encrypt, msg_signature = DOCS.seal(message, "1409659813", "1372623149")
    assert DOCS.open(msg_signature, "1409659813", "1372623149", encrypt) == message


def test_random_prefix_differs_between_encryptions() -> None:
    assert FIXED.encrypt("same") != FIXED.encrypt("same")


# -- tampering: one exception type per failure ---------------------------------------------------

KEY = decode_aes_key("kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR")


def raw_encrypt(plain: bytes) -> str:
    """AES-CBC exactly as WeCom does, but over a caller-built plaintext (no padding added)."""
    return base64.b64encode(AES.new(KEY, AES.MODE_CBC, KEY[:16]).encrypt(plain)).decode()


def test_bad_signature() -> None:
    encrypt = FIXED.encrypt("hi")
    good = FIXED.sign("1", "2", encrypt)
    with pytest.raises(SignatureError) as exc:
        FIXED.open(good[:-1] + ("0" if good[-1] != "0" else "1"), "1", "2", encrypt)
    assert exc.value.reason == "bad_signature"
    with pytest.raises(SignatureError):
        FIXED.open(good, "1", "3", encrypt)  # replayed with another nonce


def test_signature_accepts_uppercase_hex() -> None:
    encrypt = FIXED.encrypt("hi")
    assert FIXED.open(FIXED.sign("1", "2", encrypt).upper(), "1", "2", encrypt) == b"hi"


@pytest.mark.parametrize("encrypt", ["not base64!", "YWJj=", "", "YWJj\nYWJj"])
def test_bad_base64(encrypt: str) -> None:
    with pytest.raises(Base64Error) as exc:
        FIXED.decrypt(encrypt)
    assert exc.value.reason == "bad_base64"


def test_ciphertext_not_a_block_multiple() -> None:
    truncated = base64.b64decode(FIXED.encrypt("hello"))[:-1]
    with pytest.raises(Base64Error):
        FIXED.decrypt(base64.b64encode(truncated).decode())


@pytest.mark.parametrize("last_byte", [0, 33, 255])
def test_bad_padding_value(last_byte: int) -> None:
    plain = b"\x00" * 63 + bytes([last_byte])
    with pytest.raises(PaddingError) as exc:
        FIXED.decrypt(raw_encrypt(plain))
    assert exc.value.reason == "bad_padding"


def test_inconsistent_padding_bytes() -> None:
    plain = b"\x00" * 60 + b"\x01\x04\x04\x04"  # says 4 bytes of padding, but they are not all 4
    with pytest.raises(PaddingError):
        FIXED.decrypt(raw_encrypt(plain))


def test_tampered_ciphertext_never_decrypts_silently() -> None:
    raw = bytearray(base64.b64decode(FIXED.encrypt("hello", random=b"r" * 16)))
    raw[-1] ^= 0x55  # garbles the last plaintext block, hence the padding
    with pytest.raises((PaddingError, LengthError, ReceiveIdError)):
        FIXED.decrypt(base64.b64encode(bytes(raw)).decode())


def test_wrong_receiveid() -> None:
    other = MsgCrypt("123456", "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR", "ww-some-other-corp")
    encrypt = other.encrypt("for someone else")
    with pytest.raises(ReceiveIdError) as exc:
        FIXED.decrypt(encrypt)
    assert exc.value.reason == "wrong_receiveid"
    assert FIXED.decrypt_unchecked(encrypt) == (b"for someone else", "ww-some-other-corp")


def test_length_prefix_beyond_plaintext() -> None:
    body = b"\x00" * 16 + struct.pack(">I", 1000) + b"short" + b"wx49f0ab532d5d035a"
    with pytest.raises(LengthError) as exc:
        FIXED.decrypt(raw_encrypt(pkcs7_pad(body)))
    assert exc.value.reason == "bad_length"


def test_plaintext_shorter_than_header() -> None:
    with pytest.raises(LengthError):
        FIXED.decrypt(raw_encrypt(pkcs7_pad(b"\x00" * 10)))


@pytest.mark.parametrize("key", ["", "short", "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1a!", "a" * 44])
def test_bad_aes_key(key: str) -> None:
    with pytest.raises(AESKeyError):
        MsgCrypt("t", key, "corp")


def test_repr_hides_token_and_key() -> None:
    shown = repr(FIXED)
    assert "123456" not in shown and "kWxPEV2U" not in shown
