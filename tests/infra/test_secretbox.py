"""Secrets at rest: sealing, tamper and context checks, and where the key comes from."""

from __future__ import annotations

import base64
import secrets
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wxkf.secretbox import SecretBox, SecretBoxError, load_or_create_random_file, load_secret_key
from wxkf.settings import SettingsError, load_settings

BOX = SecretBox(secrets.token_bytes(32))


@given(plaintext=st.text(), context=st.text())
def test_round_trip(plaintext: str, context: str) -> None:
    sealed = BOX.seal(plaintext, context=context)
    assert sealed.startswith("v1:")
    assert BOX.open(sealed, context=context) == plaintext


def test_each_seal_differs() -> None:
    assert BOX.seal("s3cret", context="c") != BOX.seal("s3cret", context="c")


@pytest.mark.parametrize("position", [0, 12, -1])  # nonce, ciphertext, tag
def test_tampering_is_detected(position: int) -> None:
    raw = bytearray(base64.b64decode(BOX.seal("s3cret", context="corp:ww1:secret")[3:]))
    raw[position] ^= 1
    with pytest.raises(SecretBoxError):
        BOX.open("v1:" + base64.b64encode(raw).decode(), context="corp:ww1:secret")


def test_value_moved_to_another_record_does_not_open() -> None:
    sealed = BOX.seal("s3cret", context="corp:ww1:secret")
    with pytest.raises(SecretBoxError):
        BOX.open(sealed, context="corp:ww2:secret")


def test_other_key_does_not_open() -> None:
    sealed = BOX.seal("s3cret", context="c")
    with pytest.raises(SecretBoxError):
        SecretBox(secrets.token_bytes(32)).open(sealed, context="c")


@pytest.mark.parametrize("sealed", ["", "s3cret", "v2:AAAA", "v1:not base64!", "v1:" + "A" * 20])
def test_malformed_values_raise_secretbox_error(sealed: str) -> None:
    with pytest.raises(SecretBoxError):
        BOX.open(sealed, context="c")


def test_key_stays_out_of_repr() -> None:
    key = b"k" * 32
    assert "k" * 8 not in repr(SecretBox(key))
    with pytest.raises(ValueError, match="32 bytes"):
        SecretBox(b"short")


def test_derived_keys_differ_per_label_and_master_key() -> None:
    assert BOX.derive_key("fingerprint") == BOX.derive_key("fingerprint")
    assert len(BOX.derive_key("fingerprint")) == 32
    assert BOX.derive_key("fingerprint") != BOX.derive_key("other")
    assert SecretBox(secrets.token_bytes(32)).derive_key("fingerprint") != BOX.derive_key("fingerprint")


def test_random_file_is_created_once(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "admin.token"
    value = load_or_create_random_file(path, 24)
    assert len(base64.urlsafe_b64decode(value)) == 24
    assert load_or_create_random_file(path, 24) == value
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_key_from_environment() -> None:
    key = secrets.token_bytes(32)
    settings = load_settings(wxkf_secret_key=base64.b64encode(key).decode())
    assert load_secret_key(settings) == key


@pytest.mark.parametrize("value", ["not base64!", base64.b64encode(b"x" * 16).decode()])
def test_bad_key_names_the_variable(value: str) -> None:
    with pytest.raises(SettingsError, match=r"^WXKF_SECRET_KEY:"):
        load_secret_key(load_settings(wxkf_secret_key=value))


def test_key_required_with_mongo_uri(tmp_path: Path) -> None:
    settings = load_settings(mongo_uri="mongodb://db.example:27017", wxkf_data_dir=tmp_path)
    with pytest.raises(SettingsError, match=r"^WXKF_SECRET_KEY:.*MONGO_URI"):
        load_secret_key(settings)
    assert list(tmp_path.iterdir()) == []  # no key invented


def test_embedded_mode_generates_a_private_key_file_once(tmp_path: Path) -> None:
    settings = load_settings(mongo_uri=None, wxkf_secret_key=None, wxkf_data_dir=tmp_path / "data")
    key = load_secret_key(settings)
    key_file = tmp_path / "data" / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    as_variable = load_settings(wxkf_secret_key=key_file.read_text())  # the file holds WXKF_SECRET_KEY's form
    assert load_secret_key(as_variable) == key
    assert load_secret_key(settings) == key
    assert [p.name for p in key_file.parent.iterdir()] == ["secret.key"]  # no scratch file left


def test_corrupt_key_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "secret.key").write_text("garbage")
    with pytest.raises(SettingsError, match=r"secret\.key"):
        load_secret_key(load_settings(mongo_uri=None, wxkf_secret_key=None, wxkf_data_dir=tmp_path))
