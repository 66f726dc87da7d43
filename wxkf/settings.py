"""Settings from environment variables, validated once at start.

A bad value stops the process with one line naming the variable (see :func:`load_settings`), rather
than a traceback from deep inside a service an hour later.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from wxkf.endpoints import parse_networks
from wxkf.retry import parse_delays


class SettingsError(RuntimeError):
    """An environment variable has a bad value; the message names it."""


class Settings(BaseSettings):
    """Process-wide configuration. Every field maps to the upper-case environment variable."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    mongo_uri: str | None = Field(default=None, description="MongoDB URI; unset = embedded SecantusDB")
    wxkf_data_dir: Path = Field(default=Path("./.wxkf-data"), description="embedded DB data, generated keys")
    wxkf_db_name: str = Field(default="wxkf", description="database name inside MONGO_URI's server")
    wxkf_db_timeout: float = Field(
        default=2.0, ge=0.1, le=600, description="seconds one database operation may take before it fails"
    )
    wxkf_db_restart_delays: str = Field(
        default="0.2s,0.5s,1s,2s,4s,4s,8s",
        description="embedded database: waits before each restart attempt in a row; then exit 1",
    )
    host: str = Field(default="127.0.0.1", description="address the HTTP server binds")
    port: int = Field(default=8080, ge=0, le=65535, description="HTTP port")
    wecom_api_base: AnyHttpUrl = Field(default=AnyHttpUrl("https://qyapi.weixin.qq.com/cgi-bin"))
    wxkf_secret_key: SecretStr | None = Field(
        default=None, description="base64 32-byte key for secrets at rest; embedded mode generates one"
    )
    wxkf_admin_token: SecretStr | None = Field(default=None, description="bearer token for admin routes")
    wxkf_log_level: str = Field(default="INFO")
    wxkf_registration_token: SecretStr | None = Field(
        default=None, description="optional shared secret puppets must present to register"
    )
    wxkf_replica_id: str | None = Field(
        default=None, description="this process's id among replicas; default host:port:role"
    )
    manager_endpoint: AnyHttpUrl | None = Field(
        default=None, description="where `wxkf gateway` forwards kf events (a manager's base URL)"
    )
    wxkf_gateway_token: SecretStr | None = Field(
        default=None,
        description="bearer token `wxkf gateway` sends to MANAGER_ENDPOINT; /callback/decrypted requires it",
    )
    wxkf_gateway_networks: str | None = Field(
        default=None, description="comma-separated CIDRs /callback/decrypted accepts callers from"
    )
    wxkf_allowed_networks: str | None = Field(
        default=None,
        description="comma-separated CIDRs delivery targets must lie in (default: any but reserved ones)",
    )
    wxkf_delivery_connections_per_host: int = Field(
        default=256,
        ge=1,
        le=10_000,
        description="concurrent deliveries per puppet host (scheme, host, port); more wait their turn",
    )
    wxkf_max_body: int = Field(
        default=64 * 1024, ge=1024, le=16 * 1024 * 1024, description="max callback body"
    )
    wxkf_token_invalidate_interval: float = Field(
        default=10.0, ge=0, le=3600, description="min seconds between forced token refreshes per app"
    )
    wxkf_retention_days: float = Field(
        default=7.0, gt=0, le=3650, description="days finished events are kept (pending ones: until done)"
    )
    wxkf_replica_timeout: float = Field(
        default=30.0, ge=1, le=3600, description="seconds of silence before a replica's work is taken over"
    )
    wxkf_idle_release: float = Field(
        default=15.0,
        ge=0.1,
        le=3600,
        description="seconds without work before a manager releases an account's lease",
    )
    wxkf_retry_schedule: str = Field(
        default="5s,5m,30m,2h,5h,10h,10h", description="delays between delivery attempts"
    )

    @field_validator("mongo_uri")
    @classmethod
    def _mongo_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        return value or None

    @field_validator("wxkf_log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value

    @field_validator("wxkf_retry_schedule", "wxkf_db_restart_delays")
    @classmethod
    def _schedule(cls, value: str) -> str:
        parse_delays(value)
        return value

    @field_validator("wxkf_allowed_networks", "wxkf_gateway_networks")
    @classmethod
    def _networks(cls, value: str | None) -> str | None:
        parse_networks(value)
        return value

    @property
    def api_base(self) -> str:
        """``WECOM_API_BASE`` without a trailing slash."""
        return str(self.wecom_api_base).rstrip("/")


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming the first bad variable, e.g. ``PORT: Input should be ...``."""
    first = exc.errors()[0]
    name = ".".join(str(part) for part in first.get("loc", ())).upper() or "settings"
    return f"{name}: {first.get('msg', 'invalid value')}"


def load_settings(**overrides: object) -> Settings:
    """Read and validate the environment; raise :class:`SettingsError` with a one-line reason."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None
