"""WeCom calls go through the proxy the environment names when the transport's session opens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from wecom.http import WeComHttp

ANSWER = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n{"errcode":0}'


@pytest.fixture
async def listener() -> AsyncIterator[tuple[str, list[str]]]:
    """A plain HTTP/1.1 server on a free port that records each request line and answers 200."""
    lines: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            lines.append(line.decode().strip())
            while await reader.readline() not in (b"\r\n", b""):
                pass  # the headers
            writer.write(ANSWER)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}", lines


async def test_a_proxy_named_in_the_environment_carries_the_calls(
    listener: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, lines = listener
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with WeComHttp(timeout=10) as http:
        answer = await http.request("GET", "http://wecom.invalid/cgi-bin/kf/account/list")
    assert answer.status == 200 and lines == ["GET http://wecom.invalid/cgi-bin/kf/account/list HTTP/1.1"]


async def test_the_environment_is_read_when_the_session_opens_not_per_call(
    listener: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no proxy at the first call, a proxy variable set later does not apply (aiohttp would
    otherwise read the environment and ~/.netrc in a worker thread for every request)."""
    server, lines = listener
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with WeComHttp(timeout=10) as http:
        await http.request("GET", f"{server}/cgi-bin/one")
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
        answer = await http.request("GET", f"{server}/cgi-bin/two")
    assert answer.status == 200 and lines == ["GET /cgi-bin/one HTTP/1.1", "GET /cgi-bin/two HTTP/1.1"]
