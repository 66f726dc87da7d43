"""Typed views of what WeCom sends: the callback envelope, decrypted events, kf messages.

One corp app receives callbacks for every kf account *and* for unrelated events (contact changes, app
menus...). Only ``kf_msg_or_event`` gets a strict model, because routing depends on its Token and
OpenKfId; everything else becomes a :class:`RawEvent` that keeps all fields, so a router never fails
on an event it does not handle.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from wecom.xml import parse_xml

__all__ = [
    "CORP_ID",
    "KF_MSG_OR_EVENT",
    "OPEN_KFID",
    "SYNC_TOKEN",
    "CallbackEnvelope",
    "EventError",
    "KfMessage",
    "KfMsgOrEvent",
    "RawEvent",
    "parse_event",
]

KF_MSG_OR_EVENT = "kf_msg_or_event"

# The shapes of ids taken from requests (check with ``fullmatch``): anything else is refused before it
# reaches a lookup, a log line or a document.
CORP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
OPEN_KFID = re.compile(r"[A-Za-z0-9_-]{1,128}")
SYNC_TOKEN = re.compile(r"[\x21-\x7e]{1,512}")  # a callback's Token: printable ASCII


class EventError(ValueError):
    """A well-formed XML document that is not a usable envelope or kf event.

    ``reason`` is ``missing_field`` or ``bad_field``; ``field`` names the XML element.
    """

    def __init__(self, reason: str, field: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field


def _required(fields: dict[str, str], name: str, what: str) -> str:
    value = fields.get(name, "")
    if not value:
        raise EventError("missing_field", name, f"{what} has no {name}")
    return value


class CallbackEnvelope(BaseModel):
    """The encrypted POST body: ``<xml><ToUserName/><Encrypt/><AgentID/></xml>``."""

    model_config = ConfigDict(frozen=True)

    to_user_name: str
    encrypt: str = Field(repr=False)
    agent_id: str | None = None

    @classmethod
    def from_xml(cls, data: bytes | str) -> CallbackEnvelope:
        """Raises :class:`~wecom.xml.XMLError` for bad XML, :class:`EventError` without Encrypt."""
        fields = parse_xml(data)
        return cls(
            to_user_name=fields.get("ToUserName", ""),
            encrypt=_required(fields, "Encrypt", "callback envelope"),
            agent_id=fields.get("AgentID") or None,
        )


class KfMsgOrEvent(BaseModel):
    """Something new for kf account ``open_kf_id``: pull it with ``kf/sync_msg`` and ``token``."""

    model_config = ConfigDict(frozen=True)

    to_user_name: str
    create_time: int | None = None
    msg_type: Literal["event"] = "event"
    event: Literal["kf_msg_or_event"] = "kf_msg_or_event"
    token: str = Field(repr=False)  # lets sync_msg skip its strict rate limit for 10 minutes
    open_kf_id: str


class RawEvent(BaseModel):
    """Any other decrypted callback, kept whole in ``fields`` (values as :func:`parse_xml` gives them)."""

    model_config = ConfigDict(frozen=True)

    to_user_name: str | None = None
    msg_type: str | None = None
    event: str | None = None
    create_time: int | None = None
    fields: dict[str, str] = Field(repr=False)


def _create_time(fields: dict[str, str]) -> int | None:
    """Unix seconds, or None for anything else. ``str.isdigit`` alone is not enough: it accepts "²" and
    other digits ``int`` refuses, and ``int`` raises past 4300 digits; 18 ASCII digits always fit int64."""
    value = fields.get("CreateTime", "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 18 else None


def parse_event(data: bytes | str) -> KfMsgOrEvent | RawEvent:
    """Parse a decrypted callback.

    Only a ``kf_msg_or_event`` without ToUserName, Token or OpenKfId, or with a MsgType other than
    ``event``, is an error (:class:`EventError`): it cannot be routed. Anything else, known or not,
    comes back as a :class:`RawEvent`. XML problems raise :class:`~wecom.xml.XMLError`.
    """
    fields = parse_xml(data)
    msg_type = fields.get("MsgType") or None
    event = fields.get("Event") or None
    if event == KF_MSG_OR_EVENT and msg_type != "event":
        raise EventError("bad_field", "MsgType", f"kf_msg_or_event with MsgType {msg_type!r}, not 'event'")
    if event == KF_MSG_OR_EVENT:
        what = "kf_msg_or_event"
        return KfMsgOrEvent(
            to_user_name=_required(fields, "ToUserName", what),
            create_time=_create_time(fields),
            token=_required(fields, "Token", what),
            open_kf_id=_required(fields, "OpenKfId", what),
        )
    return RawEvent(
        to_user_name=fields.get("ToUserName"),
        msg_type=msg_type,
        event=event,
        create_time=_create_time(fields),
        fields=fields,
    )


class KfMessage(BaseModel):
    """One ``msg_list`` item of ``kf/sync_msg``.

    The type-specific body sits under the key named by ``msgtype`` (``{"msgtype": "text", "text":
    {...}}``); :attr:`body` returns it. Unknown fields and message types are kept (``extra="allow"``),
    so a new WeCom message type never breaks a sync.
    """

    model_config = ConfigDict(extra="allow")

    msgid: str
    open_kfid: str | None = None  # event items omit it at the top level
    external_userid: str | None = None
    send_time: int
    origin: int  # 3 customer, 4 system event, 5 servicer
    servicer_userid: str | None = None
    msgtype: str

    @property
    def body(self) -> dict[str, Any]:
        """The ``item[msgtype]`` object; empty if WeCom sent none."""
        value = (self.model_extra or {}).get(self.msgtype)
        return value if isinstance(value, dict) else {}

    @property
    def event_type(self) -> str | None:
        """For ``msgtype == "event"``, the event's ``event_type`` (enter_session, msg_send_fail...)."""
        if self.msgtype != "event":
            return None
        value = self.body.get("event_type")
        return value if isinstance(value, str) else None

    @property
    def raw(self) -> dict[str, Any]:
        """The item as WeCom sent it (declared fields plus everything else)."""
        return self.model_dump(exclude_unset=True)
