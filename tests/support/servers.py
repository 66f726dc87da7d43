"""Real HTTP servers for tests: an ASGI app on 127.0.0.1, on a port the kernel picks."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.types import ASGIApp

START_TIMEOUT = 10.0


@asynccontextmanager
async def serve_app(app: ASGIApp, *, timeout: float = START_TIMEOUT) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn for the duration of the block; yields its base URL (no trailing slash).

    The socket is bound (port 0) before uvicorn starts, so the port is known without parsing logs and
    no other process can take it in between.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, server_header=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(timeout):
            # uvicorn offers no awaitable for "listening"; its own flag is the only signal.
            while not server.started:
                if task.done():
                    task.result()  # raises what stopped the server
                    raise RuntimeError("uvicorn exited before it started")
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)
        sock.close()
