"""Temporary media: ``media/upload`` and ``media/get`` for apps, ``webhook/upload_media`` for robots.

A media_id belongs to its owner (a corp, or a robot key) and lives ``media_ttl`` (3 days); after that,
or from another owner, it is 40007 like an id that never existed.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass, field

from simulator.clock import Clock
from simulator.config import SimConfig
from simulator.wecom import errcodes as E
from simulator.wecom import ids
from simulator.wecom.errcodes import ApiError

MEDIA_TYPES = ("image", "voice", "video", "file")
_TOO_LARGE = {"image": E.INVALID_IMAGE_SIZE, "video": E.INVALID_VIDEO_SIZE}

# What the simulator stores when a customer "sends" an image or file without giving its content.
PLACEHOLDER = {
    "image": ("image.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 16, "image/png"),
    "voice": ("voice.amr", b"#!AMR\n" + b"\x00" * 16, "audio/amr"),
    "video": ("video.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 16, "video/mp4"),
    "file": ("file.txt", b"simulated file content\n", "text/plain"),
}


@dataclass(eq=False)
class Media:
    media_id: str
    owner: str
    type: str
    filename: str
    content: bytes = field(repr=False)
    content_type: str
    created_at: float


class MediaStore:
    def __init__(self, config: SimConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.items: dict[str, Media] = {}

    def upload(
        self,
        owner: str,
        type: str,
        filename: str,
        content: bytes,
        content_type: str | None = None,
        *,
        allowed_types: tuple[str, ...] = MEDIA_TYPES,
    ) -> Media:
        if type not in allowed_types:
            raise ApiError(
                E.INVALID_MEDIA_TYPE, f"invalid media type {type!r}, expected one of {allowed_types}"
            )
        if not content:
            raise ApiError(E.EMPTY_MEDIA, "media is empty")
        if len(content) < self.config.media_min_size:
            raise ApiError(E.INVALID_FILE_SIZE, f"media smaller than {self.config.media_min_size} bytes")
        limit = self.config.media_max_size.get(type)
        if limit is not None and len(content) > limit:
            raise ApiError(_TOO_LARGE.get(type, E.INVALID_FILE_SIZE), f"{type} larger than {limit} bytes")
        if not content_type or content_type == "application/octet-stream":
            content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        media = Media(ids.media_id(), owner, type, filename or "media", content, content_type, self.clock())
        self.items[media.media_id] = media
        return media

    def placeholder(self, owner: str, type: str) -> Media:
        filename, content, content_type = PLACEHOLDER[type]
        return self.upload(owner, type, filename, content, content_type)

    def get(self, owner: str, media_id: str) -> Media:
        if not media_id:
            raise ApiError(E.MISSING_MEDIA_ID, "media_id missing")
        media = self.items.get(media_id)
        if media is None or media.owner != owner or self.clock() - media.created_at > self.config.media_ttl:
            raise ApiError(E.INVALID_MEDIA_ID, f"invalid media_id: {media_id}")
        return media
