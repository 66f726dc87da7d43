"""Attacks on the public callback endpoint ``/callback/{corpId}[/{app}]``, over a real socket."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from tests.gateway.conftest import RunningGateway
from tests.support.raw_http import answer_to as _answer_to
from tests.support.raw_http import slow_post as _slow_post
from tests.support.servers import serve_app
from tests.support.services import ServiceProcess, free_port, service_env
from tests.support.wecom_callbacks import kf_event_xml, signed_post
from wxkf import http as wxkf_http
from wxkf import server as wxkf_server
from wxkf.settings import Settings


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


async def _held_for(url: str, first_bytes: bytes, limit: float) -> float | None:
    """Send ``first_bytes``, then nothing: seconds until the server closed (None: not within ``limit``)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(first_bytes)
    started = asyncio.get_running_loop().time()
    try:
        await asyncio.wait_for(reader.read(), limit)
    except TimeoutError:
        return None
    finally:
        writer.close()
    return asyncio.get_running_loop().time() - started


@pytest.mark.parametrize(
    "first_bytes",
    [b"", b"POST /callback/ww1 HTTP/1.1\r\nhost: x\r\n"],
    ids=["connects and says nothing", "sends half its headers"],
)
async def test_a_connection_that_never_finishes_its_headers_is_closed(
    gw: RunningGateway, monkeypatch: pytest.MonkeyPatch, first_bytes: bytes
) -> None:
    # uvicorn arms no timer before a connection's first response: such connections were held forever
    monkeypatch.setattr(wxkf_server, "HEADER_TIMEOUT", 0.5)
    held = await _held_for(gw.url, first_bytes, limit=10)
    assert held is not None, "the connection is still open after 10 s"


async def test_a_request_slower_than_the_header_deadline_is_still_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wxkf_server, "HEADER_TIMEOUT", 0.3)

    async def slow(request: Request) -> Response:
        await asyncio.sleep(1.0)  # a handler at work (a registration waits for WeCom), not a sync
        return PlainTextResponse("done")

    app = Starlette(routes=[Route("/slow", slow), Route("/fast", lambda request: PlainTextResponse("ok"))])
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/slow")).text == "done"
        # a kept-alive connection in use is re-armed at every response
        for _ in range(3):
            assert (await http.get("/slow")).text == "done"


async def test_a_websocket_outlives_the_header_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wxkf_server, "HEADER_TIMEOUT", 0.3)

    async def echo(socket: WebSocket) -> None:
        await socket.accept()
        await socket.send_text(await socket.receive_text())
        await socket.close()

    app = Starlette(routes=[WebSocketRoute("/ws", echo)])
    async with serve_app(app) as url, websockets.connect(url.replace("http", "ws") + "/ws") as socket:
        await asyncio.sleep(1.0)  # a quiet WebSocket, three deadlines long
        await socket.send("still here")
        assert await socket.recv() == "still here"


async def test_wxkf_gateway_closes_a_connection_that_sends_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    # the same deadline where production serves (wxkf.server.serve), at its default
    gateway = ServiceProcess(
        "gateway", service_env(settings, tmp_path / "data"), tmp_path / "gw.log", free_port()
    )
    await gateway.start()
    try:
        held = await _held_for(gateway.url, b"", limit=wxkf_server.HEADER_TIMEOUT + 10)
    finally:
        gateway.stop()
    assert held is not None and held >= wxkf_server.HEADER_TIMEOUT - 1


@pytest.mark.parametrize("path", ["/callback/" + "w" * 60_000, "/callback/ww1/" + "a" * 60_000])
async def test_a_huge_corp_id_or_app_name_is_neither_echoed_nor_logged_whole(
    gw: RunningGateway, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    # every byte of the path came back in the 404 and went into a warning: log amplification
    caplog.set_level(logging.WARNING)
    answer = await gw.http.post(path + "?msg_signature=a&timestamp=1&nonce=n", content=b"<xml/>")
    assert answer.status_code == 404
    assert len(answer.content) <= 400
    assert caplog.records and all(len(record.getMessage()) <= 800 for record in caplog.records)


async def test_a_captured_callback_replayed_after_the_retention_is_refused(gw: RunningGateway) -> None:
    # WeCom's signature covers the timestamp, but nothing checked it: once the original's document was
    # purged (WXKF_RETENTION_DAYS), a captured callback was stored and forwarded again as new
    age = gw.gateway.config.retention + 3600
    query, body = signed_post(
        gw.keys, kf_event_xml(gw.keys.corp_id, "wkOLD", "old-token"), timestamp=str(int(time.time() - age))
    )
    replayed = await gw.http.post(f"/callback/{gw.keys.corp_id}?{query}", content=body)
    assert replayed.status_code == 400 and replayed.text.startswith("stale_timestamp:"), replayed.text
    # a timestamp from a clock a few minutes off is WeCom's own, and accepted
    query, body = signed_post(
        gw.keys, kf_event_xml(gw.keys.corp_id, "wkNEW", "new-token"), timestamp=str(int(time.time() - 600))
    )
    assert (await gw.http.post(f"/callback/{gw.keys.corp_id}?{query}", content=body)).text == "success"


async def test_a_huge_header_is_answered_431_not_buffered(gw: RunningGateway) -> None:
    huge = b"POST /callback/ww1 HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 5_000_000 + b"\r\n\r\n"
    # cut off, not buffered whole and then answered (404: no such corp) as before
    answer = await _answer_to(gw.url, huge)
    assert answer in (b"", b"reset") or answer.startswith(b"HTTP/1.1 431"), answer
    # what WeCom and puppets send is far below the bound, and a large body is not a header
    padded = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 20_000 + b"\r\n\r\n"
    assert (await _answer_to(gw.url, padded)).startswith(b"HTTP/1.1 200")
    body = b"<xml>" + b"a" * 200_000 + b"</xml>"
    upload = b"POST /callback/ww1 HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    assert (await _answer_to(gw.url, upload)).startswith((b"HTTP/1.1 413", b"HTTP/1.1 404"))


async def test_a_body_still_arriving_after_its_answer_is_not_taken_for_headers(gw: RunningGateway) -> None:
    # a route may answer before reading the body (here /healthz); the rest of that body then arrived
    # while the connection waited for the next request, was counted as header bytes, and the
    # connection was cut with a 431 (the whole-hub fuzz found it with a GET carrying a large body)
    parts = urlsplit(gw.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        size = 200_000
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % size)
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert first.startswith(b"HTTP/1.1 200"), first
        length = int(
            next(line for line in first.split(b"\r\n") if line.lower().startswith(b"content-length")).split(
                b":"
            )[1]
        )
        await asyncio.wait_for(reader.readexactly(length), 10)
        writer.write(b"a" * size)
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        await writer.drain()
        second = await asyncio.wait_for(reader.read(200), 10)
        assert second.startswith(b"HTTP/1.1 200"), second
    finally:
        writer.close()
