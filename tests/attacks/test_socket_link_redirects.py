"""The puppet's WebSocket to the manager follows no redirect: its first frames carry each account's
corpSecret (or webhookSecret), so a 3xx from whatever answers at the manager's address (a
misconfigured proxy, a captive portal, a hijacked host name) must not send them anywhere else.

websockets' ``connect`` follows up to 10 redirects, cross-origin included, by default."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from puppets.bot import Bot
from simulator.state import SimState
from tests.puppets.conftest import Hosted, corp, hosted, sim, sim_config, wait_until
from tests.support.servers import serve_app

__all__ = ["corp", "hosted", "sim", "sim_config"]


class Thief:
    """A WebSocket server that keeps every frame sent to it."""

    def __init__(self) -> None:
        self.frames: list[str] = []

    async def endpoint(self, websocket: WebSocket) -> None:
        await websocket.accept()
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            self.frames.append(message.get("text") or "")


@pytest.fixture
async def thief() -> AsyncIterator[tuple[Thief, str]]:
    keeper = Thief()
    app = Starlette(routes=[WebSocketRoute("/puppetWxkfManager/ws", keeper.endpoint)])
    async with serve_app(app) as url:
        yield keeper, url.replace("http://", "ws://") + "/puppetWxkfManager/ws"


@pytest.fixture
async def redirector(thief: tuple[Thief, str]) -> AsyncIterator[tuple[list[bytes], str]]:
    """Answers every request with a 302 to the thief; the requests it saw."""
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(f"HTTP/1.1 302 Found\r\nlocation: {thief[1]}\r\ncontent-length: 0\r\n\r\n".encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield seen, f"http://127.0.0.1:{port}"


async def test_a_redirect_from_the_managers_address_gets_no_frame_and_no_secret(
    sim: tuple[str, SimState],
    thief: tuple[Thief, str],
    redirector: tuple[list[bytes], str],
    hosted: Callable[..., Awaitable[Hosted]],
) -> None:
    keeper, _ = thief
    seen, manager = redirector
    await hosted(
        Bot(),
        callback=False,
        manager=manager,
        transport="ws",
        token_url=f"{sim[0]}/cgi-bin/gettoken",
    )

    async def tried_again_or_leaked() -> bool:
        # a second handshake means the first one ended without a connection to anyone
        return len(seen) >= 2 or bool(keeper.frames)

    await wait_until(tried_again_or_leaked, 30, "a second handshake (or a frame at the thief)")
    assert keeper.frames == [], keeper.frames[:1]  # before: the auth frame, with the corpSecret
