"""Group robots: ``webhook/send?key=`` and ``webhook/upload_media?key=``.

Each robot keeps every message it accepted, so a test (or the control API) can read what a bridge
posted. Limits follow the reference: text 2048 bytes, markdown 4096, image 2 MB with an md5 of the
decoded bytes, news 1..8 articles, 20 messages a minute per robot.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from typing import Any

from simulator.clock import Clock
from simulator.config import SimConfig
from simulator.ratelimit import Limits
from simulator.wecom import errcodes as E
from simulator.wecom import ids
from simulator.wecom.errcodes import ApiError
from simulator.wecom.media import Media, MediaStore

TEXT_MAX = 2048
MARKDOWN_MAX = 4096
MAX_ARTICLES = 8
ROBOT_MEDIA_TYPES = ("file", "voice")


@dataclass(eq=False)
class Robot:
    key: str
    name: str = ""
    removed: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def owner(self) -> str:
        """Owner of the media this robot uploads (robot media are not a corp's media)."""
        return f"robot:{self.key}"

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.name, "removed": self.removed, "messages": len(self.messages)}


def _content(body: dict[str, Any], msgtype: str, limit: int) -> None:
    content = body.get("content")
    if not isinstance(content, str) or not content:
        raise ApiError(E.EMPTY_CONTENT, f"{msgtype}.content empty")
    if len(content.encode()) > limit:
        raise ApiError(E.INVALID_PARAMETER, f"{msgtype}.content exceed max length {limit}")


class Robots:
    def __init__(self, media: MediaStore, config: SimConfig, clock: Clock) -> None:
        self.media = media
        self.config = config
        self.clock = clock
        self.robots: dict[str, Robot] = {}
        self._limits = Limits([config.robot_rate] if config.robot_rate else [], clock)

    def add(self, key: str | None = None, name: str = "") -> Robot:
        key = key or ids.robot_key()
        if key in self.robots:
            raise ValueError(f"robot {key} already exists")
        robot = self.robots[key] = Robot(key, name)
        return robot

    def robot(self, key: str | None) -> Robot:
        robot = self.robots.get(key) if key else None
        if robot is None or robot.removed:
            raise ApiError(E.ROBOT_REMOVED, "invalid webhook url, or the robot was removed from the group")
        return robot

    def send(self, key: str | None, message: dict[str, Any]) -> None:
        robot = self.robot(key)
        if not self._limits.has_room(robot.key):
            raise ApiError(E.RATE_LIMITED, "api freq out of limit: messages per minute per robot")
        self._check(robot, message)  # only accepted messages count towards the limit
        self._limits.record(robot.key)
        robot.messages.append({**message, "received_at": self.clock()})

    def upload_media(
        self, key: str | None, type: str, filename: str, content: bytes, content_type: str
    ) -> Media:
        robot = self.robot(key)
        return self.media.upload(
            robot.owner, type, filename, content, content_type, allowed_types=ROBOT_MEDIA_TYPES
        )

    def _check(self, robot: Robot, message: dict[str, Any]) -> None:
        msgtype = message.get("msgtype")
        body = message.get(msgtype) if isinstance(msgtype, str) else None
        if msgtype not in (
            "text",
            "markdown",
            "markdown_v2",
            "image",
            "news",
            "file",
            "voice",
            "template_card",
        ):
            raise ApiError(E.INVALID_MSGTYPE, f"invalid msgtype {msgtype!r}")
        if not isinstance(body, dict):
            raise ApiError(E.INVALID_PARAMETER, f"{msgtype} missing")
        if msgtype == "text":
            _content(body, msgtype, TEXT_MAX)
        elif msgtype in ("markdown", "markdown_v2"):
            _content(body, msgtype, MARKDOWN_MAX)
        elif msgtype == "image":
            self._check_image(body)
        elif msgtype == "news":
            articles = body.get("articles")
            if not isinstance(articles, list) or not 1 <= len(articles) <= MAX_ARTICLES:
                raise ApiError(E.NEWS_ARTICLE_COUNT, f"news needs 1..{MAX_ARTICLES} articles")
            for article in articles:
                if not isinstance(article, dict) or not article.get("title") or not article.get("url"):
                    raise ApiError(E.INVALID_PARAMETER, "news article needs title and url")
        elif msgtype in ("file", "voice"):
            media_id = body.get("media_id")
            if not media_id:
                raise ApiError(E.MISSING_MEDIA_ID, f"{msgtype}.media_id missing")
            self.media.get(robot.owner, media_id)
        elif msgtype == "template_card" and not body.get("card_type"):
            raise ApiError(E.INVALID_PARAMETER, "template_card.card_type missing")

    def _check_image(self, body: dict[str, Any]) -> None:
        encoded, md5 = body.get("base64"), body.get("md5")
        if not isinstance(encoded, str) or not encoded or not isinstance(md5, str) or not md5:
            raise ApiError(E.INVALID_PARAMETER, "image needs base64 and md5")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(E.INVALID_PARAMETER, "image.base64 is not valid base64") from None
        if len(raw) > self.config.robot_image_max:
            raise ApiError(E.INVALID_IMAGE_SIZE, f"image larger than {self.config.robot_image_max} bytes")
        if hashlib.md5(raw).hexdigest() != md5.lower():
            raise ApiError(E.MEDIA_MD5_MISMATCH, "media md5 not match")
