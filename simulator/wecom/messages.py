"""Pure pieces of kf messaging: sync_msg cursors and pages, and checking what an app sends.

An account's log is append-only; a cursor names a position in it. sync_msg scans up to ``limit``
entries from that position and returns the visible ones: messages sent through the API are in the
log (they are part of the conversation) but never returned, and neither is anything older than
``sync_readable`` (3 days). So a page can be empty while ``has_more`` is 1, exactly the case a
puller must handle.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import hmac
import re
import struct
from collections.abc import Callable
from typing import Any

from simulator.wecom import errcodes as E
from simulator.wecom.directory import LogEntry
from simulator.wecom.errcodes import ApiError

MAX_CURSOR_BYTES = 64
MAX_TEXT_BYTES = 2048
MAX_MENU_ITEMS = 10
MSGID_PATTERN = re.compile(r"[0-9a-zA-Z_-]{1,32}\Z")

SEND_TYPES = frozenset(
    {
        "text",
        "image",
        "voice",
        "video",
        "file",
        "link",
        "miniprogram",
        "msgmenu",
        "location",
        "business_card",
        "ca_link",
    }
)
EVENT_REPLY_TYPES = frozenset({"text", "msgmenu"})
MENU_ITEM_TYPES = {
    "click": ("content",),
    "view": ("url", "content"),
    "miniprogram": ("appid", "pagepath", "content"),
    "text": ("content",),
}


# -- cursors ---------------------------------------------------------------------------------


def encode_cursor(key: bytes, open_kfid: str, position: int) -> str:
    """An opaque cursor (23 characters) that only this account's log accepts."""
    raw = struct.pack(">Q", position)
    mac = hmac.new(key, open_kfid.encode() + raw, hashlib.sha256).digest()[:9]
    return base64.urlsafe_b64encode(raw + mac).decode().rstrip("=")


def decode_cursor(key: bytes, open_kfid: str, cursor: str) -> int:
    if len(cursor.encode()) > MAX_CURSOR_BYTES:
        raise ApiError(E.INVALID_PARAMETER, f"cursor longer than {MAX_CURSOR_BYTES} bytes")
    try:
        data = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        data = b""
    if len(data) != 17 or not hmac.compare_digest(
        encode_cursor(key, open_kfid, struct.unpack(">Q", data[:8])[0]), cursor
    ):
        raise ApiError(E.INVALID_PARAMETER, "invalid cursor")
    (position,) = struct.unpack(">Q", data[:8])
    return int(position)


# -- pages -----------------------------------------------------------------------------------


def first_readable(log: list[LogEntry], since: float) -> int:
    """Position of the first entry at or after ``since`` (the log is in time order)."""
    return bisect.bisect_left(log, since, key=lambda entry: entry.at)


def read_page(
    log: list[LogEntry], start: int, limit: int, since: float, open_kfid: str
) -> tuple[list[dict[str, Any]], int, bool]:
    """``(items, next position, has_more)`` for up to ``limit`` entries from ``start``."""
    window = log[start : start + limit]
    items = [entry.item(open_kfid) for entry in window if not entry.via_api and entry.at >= since]
    end = min(start, len(log)) + len(window)
    return items, end, end < len(log)


# -- what an app may send --------------------------------------------------------------------


def check_msgid(msgid: str) -> None:
    if not MSGID_PATTERN.match(msgid):
        raise ApiError(E.INVALID_PARAMETER, "invalid msgid: 1..32 characters of [0-9a-zA-Z_-]")


def _required(body: dict[str, Any], name: str, msgtype: str, errcode: int = E.INVALID_PARAMETER) -> Any:
    value = body.get(name)
    if value is None or value == "":
        raise ApiError(errcode, f"{msgtype}.{name} missing")
    return value


def check_text(content: Any, where: str, limit: int = MAX_TEXT_BYTES) -> None:
    if not isinstance(content, str) or not content:
        raise ApiError(E.EMPTY_CONTENT, f"{where} empty")
    if len(content.encode()) > limit:
        raise ApiError(E.CONTENT_TOO_LONG, f"{where} exceeds {limit} bytes")


def check_menu(body: dict[str, Any]) -> None:
    items = body.get("list") or []
    if not isinstance(items, list):
        raise ApiError(E.INVALID_PARAMETER, "msgmenu.list must be a list")
    if len(items) > MAX_MENU_ITEMS:
        raise ApiError(E.MENU_TOO_MANY_ITEMS, f"msgmenu has more than {MAX_MENU_ITEMS} items")
    for item in items:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind not in MENU_ITEM_TYPES or not isinstance(item.get(kind), dict):
            raise ApiError(E.INVALID_MENU_ITEM, f"invalid msgmenu item type {kind!r}")
        for name in MENU_ITEM_TYPES[kind]:
            _required(item[kind], name, f"msgmenu.{kind}")


def check_outgoing(
    msgtype: str, body: Any, media_exists: Callable[[str], None], allowed: frozenset[str] = SEND_TYPES
) -> None:
    """Validate ``{msgtype: body}`` as kf/send_msg would; ``media_exists`` raises for a bad media_id."""
    if msgtype not in allowed:
        raise ApiError(E.INVALID_MSGTYPE, f"invalid msgtype {msgtype!r}")
    if not isinstance(body, dict):
        raise ApiError(E.INVALID_PARAMETER, f"{msgtype} missing")
    if msgtype == "text":
        check_text(body.get("content"), "text.content")
    elif msgtype in ("image", "voice", "video", "file"):
        media_exists(_required(body, "media_id", msgtype, E.MISSING_MEDIA_ID))
    elif msgtype == "link":
        for name in ("title", "url"):
            _required(body, name, msgtype)
        media_exists(_required(body, "thumb_media_id", msgtype, E.MISSING_MEDIA_ID))
    elif msgtype == "miniprogram":
        for name in ("appid", "pagepath"):
            _required(body, name, msgtype)
        media_exists(_required(body, "thumb_media_id", msgtype, E.MISSING_MEDIA_ID))
    elif msgtype == "msgmenu":
        check_menu(body)
    elif msgtype == "location":
        for name in ("latitude", "longitude"):
            if not isinstance(_required(body, name, msgtype), int | float):
                raise ApiError(E.INVALID_PARAMETER, f"location.{name} must be a number")
    elif msgtype == "business_card":
        _required(body, "userid", msgtype)
    elif msgtype == "ca_link":
        _required(body, "link_url", msgtype)
