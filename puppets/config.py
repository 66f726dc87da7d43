"""What ``wxkf puppet`` serves: one account from the Node puppet's ``PUPPET_WXKF_*`` variables, or many
(of one corp or several) from a TOML file.

    # puppets.toml
    manager = "http://127.0.0.1:8080"        # optional: without it WeCom calls this puppet directly
    self_endpoint = "http://10.0.0.5:3000"   # where the manager reaches this process
    port = 3000

    [[apps]]                                 # one corp app; its accounts share its credentials
    corp_id = "ww0123456789"
    secret = { env = "ACME_KF_SECRET" }      # a secret: "inline", { env = "NAME" } or { file = "path" }
    token = { file = "/run/secrets/acme_token" }
    encoding_aes_key = { env = "ACME_AES_KEY" }
    accounts = ["wkAAAA", { name = "Support" }]   # by open_kfid, or { name = ... }

Any problem (unreadable file, unknown key, unset variable, missing file) raises :class:`ConfigError`
with one line that names the field, before anything starts.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from puppets.account import AccountSpec
from wecom.crypto import CryptoError, decode_aes_key

DEFAULT_PORT = 3000
DEFAULT_DATA_DIR = Path(".wxkf-puppet-data")
ENV_PREFIX = "PUPPET_WXKF_"


class ConfigError(ValueError):
    """The puppet's configuration is unusable; the message is one line naming the field."""


@dataclass(frozen=True)
class PuppetConfig:
    accounts: list[AccountSpec]
    manager: str | None = None
    self_endpoint: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = DEFAULT_DATA_DIR
    token_url: str | None = field(default=None, repr=False)
    safety_pull_interval: float = 600.0
    heartbeat_interval: float = 15.0
    retention_days: float = 30.0
    handler_timeout: float = 300.0
    bot: str | None = None
    #: the hub's WXKF_REGISTRATION_TOKEN, when it requires one
    registration_token: str | None = field(default=None, repr=False)
    #: "http": the manager POSTs to this puppet; "ws": it connects out to the manager's WebSocket
    transport: str = "http"

    @property
    def endpoint(self) -> str:
        """Where the manager reaches this puppet."""
        return (self.self_endpoint or f"http://{self.host}:{self.port}").rstrip("/")


class _SecretFrom(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env: str | None = None
    file: Path | None = None


Secret = str | _SecretFrom


class _AccountRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    open_kfid: str = ""
    name: str = ""


class _App(BaseModel):
    model_config = ConfigDict(extra="forbid")
    corp_id: str = Field(min_length=1, max_length=64)
    secret: Secret
    token: Secret
    encoding_aes_key: Secret
    accounts: list[str | _AccountRef] = Field(min_length=1)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    manager: str | None = None
    self_endpoint: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    data_dir: Path = DEFAULT_DATA_DIR
    token_url: str | None = None
    safety_pull_interval: float = Field(default=600.0, ge=10, le=86400)
    heartbeat_interval: float = Field(default=15.0, gt=0, le=3600)
    retention_days: float = Field(default=30.0, ge=4, le=3650)
    handler_timeout: float = Field(default=300.0, gt=0, le=86400)
    bot: str | None = None
    registration_token: Secret | None = None
    transport: Literal["http", "ws"] = "http"
    apps: list[_App] = Field(min_length=1)

    @field_validator("manager", "self_endpoint", "token_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else None


def _where(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "file"


def _resolve_secret(value: Secret, where: str, env: Mapping[str, str]) -> str:
    if isinstance(value, str):
        resolved = value
    elif value.env and not value.file:
        if value.env not in env:
            raise ConfigError(f"{where}: environment variable {value.env} is not set")
        resolved = env[value.env]
    elif value.file and not value.env:
        try:
            resolved = value.file.read_text()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {value.file}: {exc.strerror}") from None
    else:
        raise ConfigError(f"{where}: give exactly one of env or file")
    resolved = resolved.strip()
    if not resolved:
        raise ConfigError(f"{where}: is empty")
    return resolved


def _check_aes_key(key: str, where: str) -> None:
    try:
        decode_aes_key(key)
    except CryptoError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_file(path: Path, env: Mapping[str, str] | None = None) -> PuppetConfig:
    env = os.environ if env is None else env
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        parsed = _File.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"{path}: {_where(first['loc'])}: {first['msg']}") from None
    accounts: list[AccountSpec] = []
    for index, app in enumerate(parsed.apps):
        where = f"{path}: apps[{index}]"
        secret = _resolve_secret(app.secret, f"{where}.secret", env)
        token = _resolve_secret(app.token, f"{where}.token", env)
        aes_key = _resolve_secret(app.encoding_aes_key, f"{where}.encoding_aes_key", env)
        _check_aes_key(aes_key, f"{where}.encoding_aes_key")
        for ref_index, ref in enumerate(app.accounts):
            account = _AccountRef(open_kfid=ref) if isinstance(ref, str) else ref
            if not account.open_kfid and not account.name:
                raise ConfigError(f"{where}.accounts[{ref_index}]: give an open_kfid or a name")
            accounts.append(
                AccountSpec(
                    app.corp_id, secret, token, aes_key, open_kfid=account.open_kfid, name=account.name
                )
            )
    _no_duplicates(accounts, str(path))
    fields = parsed.model_dump(exclude={"apps", "registration_token"})
    if parsed.registration_token is not None:
        fields["registration_token"] = _resolve_secret(
            parsed.registration_token, f"{path}: registration_token", env
        )
    return PuppetConfig(accounts=accounts, **fields)


def _no_duplicates(accounts: list[AccountSpec], where: str) -> None:
    seen: set[str] = set()
    for spec in accounts:
        if spec.label in seen:
            raise ConfigError(f"{where}: account {spec.label} is listed twice")
        seen.add(spec.label)


def load_env(env: Mapping[str, str] | None = None) -> PuppetConfig:
    """One account from the Node puppet's variables (see docs/puppets.md for the list)."""
    env = os.environ if env is None else env

    def get(name: str) -> str:
        return env.get(ENV_PREFIX + name, "").strip()

    missing = [
        ENV_PREFIX + name
        for name in ("WECOM_CORP_ID", "WECOM_CORP_SECRET", "WECOM_APP_TOKEN", "WECOM_APP_AES_KEY")
        if not get(name)
    ]
    if missing:
        raise ConfigError(f"{missing[0]} is not set (or give --config puppets.toml)")
    if not get("WECOM_KF_OPEN_ID") and not get("WECOM_KF_NAME"):
        raise ConfigError(f"{ENV_PREFIX}WECOM_KF_OPEN_ID or {ENV_PREFIX}WECOM_KF_NAME is not set")
    _check_aes_key(get("WECOM_APP_AES_KEY"), ENV_PREFIX + "WECOM_APP_AES_KEY")
    port_text = get("CALLBACK_PORT") or str(DEFAULT_PORT)
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"{ENV_PREFIX}CALLBACK_PORT: not a port number: {port_text!r}")
    try:
        checked = _File.model_validate(
            {
                "manager": get("MANAGER_ENDPOINT") or None,
                "self_endpoint": get("SELF_ENDPOINT") or None,
                "host": get("CALLBACK_HOST") or "127.0.0.1",
                "port": int(port_text),
                "data_dir": get("DATA_DIR") or DEFAULT_DATA_DIR,
                "token_url": env.get("ACCESS_TOKEN_URL") or get("ACCESS_TOKEN_URL") or None,
                "apps": [
                    {"corp_id": "-", "secret": "-", "token": "-", "encoding_aes_key": "-", "accounts": ["-"]}
                ],
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        names = {
            "manager": "MANAGER_ENDPOINT",
            "self_endpoint": "SELF_ENDPOINT",
            "token_url": "ACCESS_TOKEN_URL",
        }
        name = names.get(str(first["loc"][0]), str(first["loc"][0]).upper())
        raise ConfigError(f"{ENV_PREFIX}{name}: {first['msg']}") from None
    spec = AccountSpec(
        get("WECOM_CORP_ID"),
        get("WECOM_CORP_SECRET"),
        get("WECOM_APP_TOKEN"),
        get("WECOM_APP_AES_KEY"),
        open_kfid=get("WECOM_KF_OPEN_ID"),
        name=get("WECOM_KF_NAME"),
    )
    return PuppetConfig(
        accounts=[spec],
        registration_token=get("REGISTRATION_TOKEN") or None,
        **checked.model_dump(exclude={"apps", "registration_token"}),
    )
