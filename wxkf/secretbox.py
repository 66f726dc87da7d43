"""Encryption of secrets at rest (corp secrets, callback tokens, AES keys in the database).

A database dump or backup alone then reveals no secret; the key lives outside the database
(``WXKF_SECRET_KEY``, or ``<data_dir>/secret.key`` in embedded mode).

AES-256-GCM with a random 96-bit nonce. Each seal names a *context* (e.g. ``"corp:ww123:secret"``) that is
authenticated with the ciphertext, so a sealed value copied into another record or field fails to open.
The ``v1:`` prefix leaves room to change the scheme or rotate keys later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from contextlib import suppress
from pathlib import Path

from Crypto.Cipher import AES

from wxkf.settings import Settings, SettingsError

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
VERSION = "v1"
KEY_FILE = "secret.key"

_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")


class SecretBoxError(ValueError):
    """A sealed value is malformed, was tampered with, or belongs to another context or key."""


class SecretBox:
    """Seals and opens strings with one 32-byte key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"a SecretBox key is {KEY_SIZE} bytes, not {len(key)}")
        self._key = key

    def __repr__(self) -> str:
        return "SecretBox(key=<hidden>)"

    def derive_key(self, label: str) -> bytes:
        """A 32-byte key for another purpose (e.g. HMAC fingerprints), independent per ``label``.

        HMAC-SHA256 as a PRF keyed by the master key: one secret to manage, and no purpose's key
        reveals the master key or another purpose's key.
        """
        return hmac.new(self._key, f"wxkf-derive:{label}".encode(), hashlib.sha256).digest()

    def seal(self, plaintext: str, *, context: str) -> str:
        """``"v1:" + base64(nonce | ciphertext | tag)``, bound to ``context``."""
        nonce = secrets.token_bytes(NONCE_SIZE)
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=nonce)
        cipher.update(_associated_data(context))
        ciphertext, tag = cipher.encrypt_and_digest(plaintext.encode())
        return f"{VERSION}:{base64.b64encode(nonce + ciphertext + tag).decode()}"

    def open(self, sealed: str, *, context: str) -> str:
        """The plaintext of a :meth:`seal` result made with the same key and context."""
        version, _, body = sealed.partition(":")
        if version != VERSION:
            raise SecretBoxError(f"unknown sealed value version {version[:8]!r}")
        try:
            raw = base64.b64decode(body, validate=True)
        except binascii.Error:
            raise SecretBoxError("sealed value is not valid base64") from None
        if len(raw) < NONCE_SIZE + TAG_SIZE:
            raise SecretBoxError("sealed value is too short")
        nonce, ciphertext, tag = raw[:NONCE_SIZE], raw[NONCE_SIZE:-TAG_SIZE], raw[-TAG_SIZE:]
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=nonce)
        cipher.update(_associated_data(context))
        try:
            plaintext = cipher.decrypt_and_verify(ciphertext, tag)
        except ValueError:
            raise SecretBoxError(
                "sealed value does not verify (tampered, wrong key or wrong context)"
            ) from None
        return plaintext.decode()


def _associated_data(context: str) -> bytes:
    return f"wxkf-secretbox:{VERSION}:{context}".encode()


def load_secret_key(settings: Settings) -> bytes:
    """The key for :class:`SecretBox`.

    ``WXKF_SECRET_KEY`` if set. Otherwise, in embedded mode only, ``<data_dir>/secret.key``, generated
    (mode 0600) on first start. With ``MONGO_URI`` set the key must be given: replicas that each invented
    one could not read each other's records.
    """
    if settings.wxkf_secret_key is not None:
        return _decode_key(settings.wxkf_secret_key.get_secret_value(), "WXKF_SECRET_KEY")
    if settings.mongo_uri is not None:
        raise SettingsError(
            "WXKF_SECRET_KEY: required when MONGO_URI is set (all replicas must share it); "
            'make one with: python -c "import base64,os; print(base64.b64encode(os.urandom(32)).decode())"'
        )
    # Same text form as WXKF_SECRET_KEY: moving to MONGO_URI means copying the file into the environment.
    path = settings.wxkf_data_dir / KEY_FILE
    return _decode_key(load_or_create_random_file(path), str(path))


def _decode_key(text: str, source: str) -> bytes:
    """Standard or URL-safe base64 of exactly :data:`KEY_SIZE` bytes."""
    try:
        key = base64.b64decode(text.strip().translate(_URLSAFE_TO_STANDARD), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != KEY_SIZE:
        raise SettingsError(f"{source}: must be the base64 encoding of {KEY_SIZE} random bytes")
    return key


def load_or_create_random_file(path: Path, num_bytes: int = KEY_SIZE) -> str:
    """The text of ``path`` (stripped); first created as ``num_bytes`` random bytes in URL-safe base64.

    For secrets generated on first start in embedded mode (the secret key, the admin token). The file
    (mode 0600) appears atomically and complete: written aside, then hard-linked into place, so two
    processes starting at once agree on one value.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        scratch = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as file:
                file.write(base64.urlsafe_b64encode(secrets.token_bytes(num_bytes)).decode() + "\n")
                file.flush()
                os.fsync(file.fileno())
            with suppress(FileExistsError):  # another process won the race: use its value
                os.link(scratch, path)
        finally:
            scratch.unlink(missing_ok=True)
    return path.read_text().strip()
