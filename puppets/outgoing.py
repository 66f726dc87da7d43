"""What a bot can send: one small class per ``kf/send_msg`` type, and a plain str for text.

Each turns into WeCom's ``(msgtype, body)`` through :meth:`Outgoing.render`. Media (image, voice,
video, file, and the thumbnails of links and miniprograms) may be given as bytes, a path or an existing
``media_id``; bytes and paths are uploaded through the :class:`Uploader` the puppet passes in, which
caches uploads by content hash for their 3-day life.

Send bodies differ from received ones (a link sends ``thumb_media_id``, not ``pic_url``), which is why
these are separate from :mod:`puppets.messages`.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "Click",
    "Content",
    "File",
    "Image",
    "Link",
    "Location",
    "Menu",
    "MenuItem",
    "MenuText",
    "Miniprogram",
    "MiniprogramItem",
    "Outgoing",
    "Text",
    "Video",
    "View",
    "Voice",
    "render",
]

Body = dict[str, Any]
MediaSource = bytes | str | os.PathLike[str]


class Uploader(Protocol):
    async def upload(self, media_type: str, content: bytes, filename: str) -> str:
        """The media_id of ``content`` (uploaded now, or earlier within its lifetime)."""
        ...


class Outgoing:
    """Base of every sendable content."""

    msgtype = ""

    async def render(self, uploader: Uploader) -> tuple[str, Body]:
        raise NotImplementedError


@dataclass(frozen=True)
class Text(Outgoing):
    content: str
    msgtype = "text"

    async def render(self, uploader: Uploader) -> tuple[str, Body]:
        return "text", {"content": self.content}


async def _media_id(
    uploader: Uploader,
    media_type: str,
    source: MediaSource | None,
    media_id: str | None,
    filename: str | None,
) -> str:
    if media_id:
        return media_id
    if source is None:
        raise ValueError(f"{media_type}: give the content (bytes or a path) or a media_id")
    if isinstance(source, bytes):
        return await uploader.upload(media_type, source, filename or f"{media_type}.bin")
    path = Path(source)
    content = await asyncio.to_thread(path.read_bytes)
    return await uploader.upload(media_type, content, filename or path.name)


@dataclass(frozen=True)
class _Media(Outgoing):
    """``Image("photo.jpg")``, ``Image(b"...", filename="a.png")`` or ``Image(media_id="...")``."""

    source: MediaSource | None = None
    media_id: str | None = None
    filename: str | None = None

    async def render(self, uploader: Uploader) -> tuple[str, Body]:
        return self.msgtype, {
            "media_id": await _media_id(uploader, self.msgtype, self.source, self.media_id, self.filename)
        }


class Image(_Media):
    msgtype = "image"


class Voice(_Media):
    """AMR only, at most 2 MB and 60 s (WeCom's rule)."""

    msgtype = "voice"


class Video(_Media):
    msgtype = "video"


class File(_Media):
    msgtype = "file"


@dataclass(frozen=True)
class Link(Outgoing):
    title: str
    url: str
    desc: str = ""
    thumb: MediaSource | None = None
    thumb_media_id: str | None = None
    msgtype = "link"

    async def render(self, uploader: Uploader) -> tuple[str, Body]:
        body: Body = {"title": self.title, "url": self.url, "desc": self.desc}
        if self.thumb is not None or self.thumb_media_id:
            body["thumb_media_id"] = await _media_id(uploader, "image", self.thumb, self.thumb_media_id, None)
        return "link", body


@dataclass(frozen=True)
class Miniprogram(Outgoing):
    appid: str
    title: str
    pagepath: str
    thumb: MediaSource | None = None
    thumb_media_id: str | None = None
    msgtype = "miniprogram"

    async def render(self, uploader: Uploader) -> tuple[str, Body]:
        thumb = await _media_id(uploader, "image", self.thumb, self.thumb_media_id, None)
        return "miniprogram", {
            "appid": self.appid,
            "title": self.title,
            "pagepath": self.pagepath,
            "thumb_media_id": thumb,
        }


@dataclass(frozen=True)
class Location(Outgoing):
    latitude: float
    longitude: float
    name: str = ""
    address: str = ""
    msgtype = "location"

    async def render(self, uploader: Uploader) -> tuple[str, Body]:
        return "location", {
            "latitude": self.latitude,
            "longitude": self.longitude,
            "name": self.name,
            "address": self.address,
        }


# -- msgmenu ---------------------------------------------------------------------------------


class MenuItem:
    def item(self) -> Body:
        raise NotImplementedError


@dataclass(frozen=True)
class Click(MenuItem):
    """An option: the customer's click comes back as a :class:`~puppets.messages.MenuClick` with ``id``."""

    id: str
    content: str

    def item(self) -> Body:
        return {"type": "click", "click": {"id": self.id, "content": self.content}}


@dataclass(frozen=True)
class View(MenuItem):
    url: str
    content: str

    def item(self) -> Body:
        return {"type": "view", "view": {"url": self.url, "content": self.content}}


@dataclass(frozen=True)
class MiniprogramItem(MenuItem):
    appid: str
    pagepath: str
    content: str

    def item(self) -> Body:
        return {
            "type": "miniprogram",
            "miniprogram": {"appid": self.appid, "pagepath": self.pagepath, "content": self.content},
        }


@dataclass(frozen=True)
class MenuText(MenuItem):
    content: str
    no_newline: bool = False

    def item(self) -> Body:
        return {"type": "text", "text": {"content": self.content, "no_newline": int(self.no_newline)}}


@dataclass(frozen=True)
class Menu(Outgoing):
    """``Menu("How can we help?", [Click("1", "Orders"), Click("2", "Returns")])`` (at most 10 items)."""

    head: str = ""
    items: list[MenuItem] = field(default_factory=list)
    tail: str = ""
    msgtype = "msgmenu"

    async def render(self, uploader: Uploader) -> tuple[str, Body]:
        body: Body = {"list": [item.item() for item in self.items]}
        if self.head:
            body["head_content"] = self.head
        if self.tail:
            body["tail_content"] = self.tail
        return "msgmenu", body


Content = str | Outgoing


async def render(content: Content, uploader: Uploader) -> tuple[str, Body]:
    """``(msgtype, body)`` for any content; a str is a text message."""
    if isinstance(content, str):
        return await Text(content).render(uploader)
    if isinstance(content, Outgoing):
        return await content.render(uploader)
    raise TypeError(f"cannot send a {type(content).__name__}: give a str or a puppets content object")
