"""Hand-written HTTP/1.1 on a raw socket, for requests no client library sends: a trickled body, a
huge header, bytes after the answer."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

from wxkf.tasks import finished_within


async def answer_to(url: str, request: bytes) -> bytes:
    """Send ``request`` as it is; the first bytes of the answer (``b"reset"``: closed with ours unread)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        with contextlib.suppress(ConnectionError):  # the server may close before it read everything
            await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read(200)
    except ConnectionResetError:  # closed with our bytes unread: the kernel resets, the 431 may be lost
        return b"reset"
    finally:
        writer.close()


async def slow_post(url: str, path: str, declared: int, interval: float) -> bytes:
    """Declare ``declared`` body bytes, then trickle one byte per ``interval`` s; the answer, if any."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: text/xml\r\n"
        f"content-length: {declared}\r\n\r\n".encode()
    )
    try:
        for _ in range(declared):
            await writer.drain()
            answer = asyncio.ensure_future(reader.read(4096))
            if await finished_within(answer, interval):  # else the read was cancelled
                return answer.result()
            writer.write(b"<")
        return await reader.read(4096)
    finally:
        writer.close()
