"""The JSON the control API and seed files accept, validated with pydantic.

A seed file is ``{"config": {...}, "corps": [CorpIn...], "robots": [RobotIn...]}``; ``POST /sim/corps``
takes one :class:`CorpIn`, so a whole corp (apps, accounts, customers) can be created in one call.
Omitted ids and credentials are generated.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from wecom.crypto import AESKeyError, decode_aes_key

_TOKEN = re.compile(r"[A-Za-z0-9]{1,32}\Z")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _http_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value


class AppIn(_In):
    name: str = "kf"
    agentid: int | None = Field(default=None, ge=1)
    secret: str | None = Field(default=None, min_length=1)
    token: str | None = None
    encoding_aes_key: str | None = None
    callback_url: str | None = None

    @field_validator("token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        if value is not None and not _TOKEN.match(value):
            raise ValueError("token must be 1..32 letters or digits")
        return value

    @field_validator("encoding_aes_key")
    @classmethod
    def _aes_key(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                decode_aes_key(value)
            except AESKeyError as exc:
                raise ValueError(str(exc)) from None
        return value

    _url = field_validator("callback_url")(_http_url)


class AppPatch(_In):
    callback_url: str | None = None
    name: str | None = None

    _url = field_validator("callback_url")(_http_url)


class AccountIn(_In):
    open_kfid: str | None = None
    name: str = "客服"
    avatar: str = ""
    managed_by: list[int] | None = Field(default=None, description="agentids; default every app of the corp")
    servicers: list[str] = Field(default_factory=list)


class AccountPatch(_In):
    name: str | None = None
    managed_by: list[int] | None = None
    servicers: list[str] | None = None


class CustomerIn(_In):
    external_userid: str | None = None
    nickname: str = ""
    avatar: str = ""
    gender: int = Field(default=0, ge=0, le=2)
    unionid: str | None = None


class CorpIn(_In):
    corpid: str | None = None
    name: str = ""
    apps: list[AppIn] = Field(default_factory=list)
    accounts: list[AccountIn] = Field(default_factory=list)
    customers: list[CustomerIn] = Field(default_factory=list)


class RobotIn(_In):
    key: str | None = None
    name: str = ""


class SeedIn(_In):
    config: dict[str, Any] | None = None
    corps: list[CorpIn] = Field(default_factory=list)
    robots: list[RobotIn] = Field(default_factory=list)


class MessageIn(BaseModel):
    """``{"external_userid"?, "msgtype", "<msgtype>": {...}, "servicer_userid"?}`` — WeCom's own shape."""

    model_config = ConfigDict(extra="allow")

    external_userid: str | None = None
    msgtype: str = Field(min_length=1)
    servicer_userid: str | None = None

    def body(self) -> dict[str, Any]:
        body = (self.model_extra or {}).get(self.msgtype, {})
        if not isinstance(body, dict):
            raise ValueError(f"{self.msgtype} must be an object")
        return body


class EventIn(BaseModel):
    """``enter_session`` (with ``scene``, ``scene_param``, ``welcome``...) or any other event's fields."""

    model_config = ConfigDict(extra="allow")

    event_type: str = Field(min_length=1)
    external_userid: str | None = None
    scene: str = ""
    scene_param: str = ""
    wechat_channels: dict[str, Any] | None = None
    welcome: bool | None = Field(
        default=None, description="force a welcome_code on/off; default WeCom's rule"
    )

    def fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RawEventIn(_In):
    """A non-kf callback: flat XML fields (``MsgType``, ``Event``...), encrypted and sent as WeCom would."""

    fields: dict[str, str | int]


class InvalidateIn(_In):
    access_token: str | None = None
    corpid: str | None = None
    agentid: int | None = None
