"""A bare TCP listener that records every connection made to it: proves that nothing reached an address."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nsuccess"


@asynccontextmanager
async def bystander(host: str) -> AsyncIterator[tuple[str, list[bytes]]]:
    """Listen on ``host`` (e.g. ``127.0.0.2``, any port); yields its base URL and the first bytes each
    connection sent. Every connection is answered with a 200 and closed."""
    seen: list[bytes] = []

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read(65536))
        writer.write(OK)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(connected, host, 0)
    try:
        yield f"http://{host}:{server.sockets[0].getsockname()[1]}", seen
    finally:
        server.close()
        await server.wait_closed()
