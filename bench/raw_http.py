"""Bare HTTP/1.1 over asyncio and httptools, for the stand-ins' hot path in the benchmarks.

The load generator (WeCom's stand-in) and the puppet fleet share the benchmark machine with the hub
and its database, although in production neither runs there. Through aiohttp they took ~35 % of one of
its two cores at 500 callbacks/s; this keeps them to what a request costs at least: one pre-built
request written to a keep-alive connection, answers parsed by httptools' C parser (which uvicorn
also uses). Not a general HTTP implementation: no chunked request bodies we send, no pipelining
beyond what the parser hands us, no TLS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

import httptools

Handler = Callable[[int, str, bytes, bytes], tuple[int, str, bytes]]
"""(headers-complete monotonic ns, method, raw URL, body) -> (status, content type, body)."""


def request_bytes(method: str, target: str, host: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _ServerConnection(asyncio.Protocol):
    def __init__(self, handler: Handler, clock: Callable[[], int]) -> None:
        self._handler = handler
        self._clock = clock
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._at = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.close()

    def on_message_begin(self) -> None:
        self._url, self._body = b"", []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_headers_complete(self) -> None:
        self._at = self._clock()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        assert self._transport is not None
        method = self._parser.get_method().decode()
        status, content_type, payload = self._handler(self._at, method, self._url, b"".join(self._body))
        keep_alive = self._parser.should_keep_alive()
        head = (
            f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(payload)}\r\n{'' if keep_alive else 'Connection: close'}\r\n"
        )
        self._transport.write(head.encode() + payload)
        if not keep_alive:
            self._transport.close()


async def serve(
    handler: Handler, host: str, port: int, clock: Callable[[], int], backlog: int = 1024
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _ServerConnection(handler, clock), host, port, backlog=backlog, reuse_address=True
    )


class _ClientConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[int] | None = None
        self._status = 0
        self._keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    @property
    def reusable(self) -> bool:
        return self._keep_alive and self._transport is not None and not self._transport.is_closing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._keep_alive = False
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(ConnectionError("connection closed before the answer"))

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._keep_alive = False
            if self._answer is not None and not self._answer.done():
                self._answer.set_exception(ConnectionError(f"bad answer: {exc}"))
            assert self._transport is not None
            self._transport.close()

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()

    def on_message_complete(self) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(self._status)

    async def exchange(self, request: bytes) -> int:
        assert self._transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return await self._answer

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class Client:
    """Keep-alive connections to one server; a request waits for an idle one or opens a new one."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[_ClientConnection] = []

    async def send(self, request: bytes) -> int:
        """Write one pre-built request (:func:`request_bytes`); returns the answer's status.

        A kept-alive connection the server closed meanwhile (uvicorn closes idle ones after 5 s) is
        dropped, and the request goes out on another: it was never sent, so nothing is repeated."""
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable:
                break
            connection.close()
        else:
            loop = asyncio.get_running_loop()
            _, connection = await loop.create_connection(_ClientConnection, self.host, self.port)
        try:
            status = await connection.exchange(request)
        except BaseException:
            connection.close()
            raise
        if connection.reusable:
            self._idle.append(connection)
        else:
            connection.close()
        return status

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
