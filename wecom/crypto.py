"""WeCom callback crypto ("WXBizMsgCrypt"), also used by DingTalk event callbacks.

Plaintext layout: ``random(16) || uint32_be(len(msg)) || msg || receiveid``, padded PKCS#7 to
**32-byte** blocks, AES-256-CBC with ``iv = key[:16]``, then base64. The signature is the SHA-1 of
the plain-sorted concatenation of token, timestamp, nonce and the ciphertext.

Every failure has its own exception type so an HTTP handler can answer precisely (and a metric can
count each reason) without parsing messages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct

from Crypto.Cipher import AES

BLOCK_SIZE = 32


class CryptoError(ValueError):
    """Base class: the callback could not be authenticated or decrypted."""

    reason = "crypto"


class AESKeyError(CryptoError):
    """The EncodingAESKey is not 43 characters of base64 for a 32-byte key."""

    reason = "bad_aes_key"


class SignatureError(CryptoError):
    """msg_signature does not match token, timestamp, nonce and ciphertext."""

    reason = "bad_signature"


class Base64Error(CryptoError):
    """The ciphertext is not valid base64, or not a whole number of AES blocks."""

    reason = "bad_base64"


class PaddingError(CryptoError):
    """The decrypted PKCS#7 padding is not 1..32 identical bytes."""

    reason = "bad_padding"


class LengthError(CryptoError):
    """The length prefix points outside the decrypted plaintext."""

    reason = "bad_length"


class ReceiveIdError(CryptoError):
    """The plaintext's receiveid is not the corp (or suite) this key belongs to."""

    reason = "wrong_receiveid"


def signature(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    """The ``msg_signature`` WeCom computes: sha1 over the sorted, concatenated parts."""
    parts = sorted([token, str(timestamp), str(nonce), encrypt])
    return hashlib.sha1("".join(parts).encode()).hexdigest()


def verify_signature(token: str, timestamp: str, nonce: str, encrypt: str, msg_signature: str) -> None:
    """Raise :class:`SignatureError` unless ``msg_signature`` matches, compared in constant time."""
    expected = signature(token, timestamp, nonce, encrypt)
    if not hmac.compare_digest(expected.encode(), msg_signature.strip().lower().encode()):
        raise SignatureError("msg_signature does not match")


def decode_aes_key(encoding_aes_key: str) -> bytes:
    """Turn the 43-character EncodingAESKey into the 32-byte AES key."""
    if len(encoding_aes_key) != 43:
        raise AESKeyError("EncodingAESKey must be 43 characters")
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except binascii.Error as exc:
        raise AESKeyError("EncodingAESKey is not base64") from exc
    if len(key) != 32:
        raise AESKeyError("EncodingAESKey does not decode to 32 bytes")
    return key


def pkcs7_pad(data: bytes, block_size: int = BLOCK_SIZE) -> bytes:
    amount = block_size - len(data) % block_size
    return data + bytes([amount]) * amount


def pkcs7_unpad(data: bytes, block_size: int = BLOCK_SIZE) -> bytes:
    if not data:
        raise PaddingError("empty plaintext")
    amount = data[-1]
    if not 1 <= amount <= block_size or amount > len(data) or data[-amount:] != bytes([amount]) * amount:
        raise PaddingError("invalid PKCS#7 padding")
    return data[:-amount]


class MsgCrypt:
    """Encrypts, decrypts and signs callbacks for one app (token, EncodingAESKey, receiveid).

    Instances are immutable and cheap to keep per registered app.
    """

    __slots__ = ("_key", "receive_id", "token")

    def __init__(self, token: str, encoding_aes_key: str, receive_id: str) -> None:
        self.token = token
        self.receive_id = receive_id
        self._key = decode_aes_key(encoding_aes_key)

    def __repr__(self) -> str:  # never show the token or key
        return f"MsgCrypt(receive_id={self.receive_id!r})"

    def same_key(self, other: MsgCrypt) -> bool:
        """True if ``other`` uses the same AES key (compared in constant time)."""
        return hmac.compare_digest(self._key, other._key)

    # -- raw encryption ---------------------------------------------------------------------
    def encrypt(self, message: bytes | str, *, random: bytes | None = None) -> str:
        """Return the base64 ``Encrypt`` value for ``message``; ``random`` fixes the 16-byte prefix."""
        body = message.encode() if isinstance(message, str) else message
        prefix = os.urandom(16) if random is None else random
        if len(prefix) != 16:
            raise ValueError("random prefix must be 16 bytes")
        plain = prefix + struct.pack(">I", len(body)) + body + self.receive_id.encode()
        cipher = AES.new(self._key, AES.MODE_CBC, self._key[:16])
        return base64.b64encode(cipher.encrypt(pkcs7_pad(plain))).decode()

    def decrypt_unchecked(self, encrypt: str) -> tuple[bytes, str]:
        """Decrypt without checking the receiveid; return ``(message, receiveid)``."""
        try:
            raw = base64.b64decode(encrypt, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Base64Error("Encrypt is not valid base64") from exc
        if not raw or len(raw) % 16:
            raise Base64Error("ciphertext is not a whole number of AES blocks")
        cipher = AES.new(self._key, AES.MODE_CBC, self._key[:16])
        plain = pkcs7_unpad(cipher.decrypt(raw))
        if len(plain) < 20:
            raise LengthError("plaintext shorter than its header")
        (length,) = struct.unpack(">I", plain[16:20])
        if 20 + length > len(plain):
            raise LengthError("message length exceeds plaintext")
        message = plain[20 : 20 + length]
        try:
            receive_id = plain[20 + length :].decode()
        except UnicodeDecodeError as exc:
            raise ReceiveIdError("receiveid is not UTF-8") from exc
        return message, receive_id

    def decrypt(self, encrypt: str) -> bytes:
        """Decrypt ``encrypt`` and check that it was meant for this app's receiveid."""
        message, receive_id = self.decrypt_unchecked(encrypt)
        if not hmac.compare_digest(receive_id.encode(), self.receive_id.encode()):
            raise ReceiveIdError("receiveid does not match")
        return message

    # -- the callback protocol --------------------------------------------------------------
    def sign(self, timestamp: str, nonce: str, encrypt: str) -> str:
        return signature(self.token, timestamp, nonce, encrypt)

    def verify(self, msg_signature: str, timestamp: str, nonce: str, encrypt: str) -> None:
        verify_signature(self.token, timestamp, nonce, encrypt, msg_signature)

    def verify_url(self, msg_signature: str, timestamp: str, nonce: str, echostr: str) -> bytes:
        """URL verification: check the signature over ``echostr`` and return its plaintext."""
        self.verify(msg_signature, timestamp, nonce, echostr)
        return self.decrypt(echostr)

    def open(self, msg_signature: str, timestamp: str, nonce: str, encrypt: str) -> bytes:
        """Verify then decrypt a callback's ``Encrypt`` field."""
        self.verify(msg_signature, timestamp, nonce, encrypt)
        return self.decrypt(encrypt)

    def seal(self, message: bytes | str, timestamp: str, nonce: str) -> tuple[str, str]:
        """Encrypt and sign: return ``(encrypt, msg_signature)``."""
        encrypt = self.encrypt(message)
        return encrypt, self.sign(timestamp, nonce, encrypt)
