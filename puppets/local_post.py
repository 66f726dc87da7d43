"""One POST through an ASGI app in this process, without an HTTP client: how a socket delivery reaches
the puppet's own callback routes (:mod:`puppets.socket_link`).

The request is what the HTTP delivery's POST would be (path, query string, headers, body), so the
routes check it exactly as they check one from the network; the answer is the route's status and
body. httpx's in-process transport would do the same at several times the cost per call (request
building, cookie jar, response model), which over the socket is paid for every delivery.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message

SERVER = ("socket", 80)


async def post(
    app: ASGIApp, path: str, query: str, headers: Mapping[str, str], body: bytes
) -> tuple[int, str]:
    """POST ``body`` to ``path?query`` of ``app``; ``(status, text)`` of its response."""
    raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    raw = [pair for pair in raw if pair[0] not in (b"host", b"content-length")]
    raw += [(b"host", SERVER[0].encode()), (b"content-length", str(len(body)).encode())]
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": raw,
        "client": None,
        "server": SERVER,
    }
    sent = False
    status = 500
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks).decode(errors="replace")
