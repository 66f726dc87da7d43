"""Attacks on the public callback endpoint ``/callback/{corpId}[/{app}]``, over a real socket."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest

from tests.gateway.conftest import RunningGateway
from wxkf import http as wxkf_http


async def _slow_post(url: str, path: str, declared: int, interval: float) -> bytes:
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
            try:
                return await asyncio.wait_for(reader.read(4096), interval)
            except TimeoutError:
                writer.write(b"<")
        return await reader.read(4096)
    finally:
        writer.close()


async def test_a_callback_body_trickled_byte_by_byte_is_cut_off_with_a_408(
    gw: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # slow-loris: each such request holds a connection and a handler for as long as the client likes;
    # thousands of them exhaust the hub's file descriptors and WeCom's callbacks find no socket
    monkeypatch.setattr(wxkf_http, "BODY_TIMEOUT", 0.5)
    path = f"/callback/{gw.keys.corp_id}?msg_signature=a&timestamp=1&nonce=n"
    async with asyncio.timeout(20):  # 200 bytes at 0.1 s: the body would take 20 s to arrive
        answer = await _slow_post(gw.url, path, declared=200, interval=0.1)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"slow_body" in answer
