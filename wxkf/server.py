"""Serve a Starlette app with uvicorn in the current event loop (so services share one runtime)."""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from wxkf import health
from wxkf.database import DatabaseError
from wxkf.runtime import Runtime

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Requests still open this long after a stop signal are cancelled (their callers get no answer; WeCom
# retries). Part of the bounded shutdown: docs/architecture.md, "The database as a failure domain".
GRACEFUL_SHUTDOWN = 5

# Seconds a connection may take to send a request's headers: from when it opened, or from the
# previous response on a kept-alive connection (the body has its own deadline, wxkf.http.BODY_TIMEOUT).
HEADER_TIMEOUT = 10.0
# Bytes a request's line and headers may take (httptools sets no limit: a 50 MB header was buffered
# whole and answered); more is answered 431 and the connection closed.
MAX_HEADER_BYTES = 64 * 1024
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
    b"connection: close\r\ncontent-length: 36\r\n\r\ntoo_large: request headers too large"
)


class HeaderDeadline(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP protocol, closing a connection that has not sent a whole request's headers within
    :data:`HEADER_TIMEOUT`, or whose request line and headers exceed :data:`MAX_HEADER_BYTES`.

    uvicorn arms no timer before a connection's first response: a client that connects and sends
    nothing, or trickles its headers (slow-loris), holds a socket for as long as it likes, and enough
    of them leave no file descriptor for WeCom's callbacks. A request being handled is never cut.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0  # received since the deadline was armed, while no request was complete
        # httptools' parser reports where a request's headers end; between that and the next request's
        # start the bytes are a body (possibly still arriving after its response went out)
        self._in_headers = True

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or bool(self.cycle.response_complete)

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        self._header_bytes = 0
        self._header_deadline = self.loop.call_later(HEADER_TIMEOUT, self._header_deadline_passed)

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        if self._waiting_for_headers() and not self.transport.is_closing():
            self.transport.close()

    def on_message_begin(self) -> None:
        self._in_headers = True
        self._header_bytes = 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._in_headers or not self._waiting_for_headers():
            self._header_bytes = 0  # the headers are complete: what follows is a body
            return
        self._header_bytes += len(data)
        if self._header_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
            self.transport.write(_TOO_LARGE)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_deadline()

    def handle_websocket_upgrade(self, *args: Any) -> None:
        self._disarm_header_deadline()  # the transport belongs to the WebSocket from here on
        super().handle_websocket_upgrade(*args)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None


class _Server(uvicorn.Server):
    """uvicorn's server, calling ``on_started(url)`` once it listens (``url`` has the real port)."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[str], None] | None) -> None:
        super().__init__(config)
        self.on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.on_started is not None and self.started and self.servers:
            port = self.servers[0].sockets[0].getsockname()[1]
            self.on_started(f"http://{self.config.host}:{port}")


def uvicorn_config(app: Starlette, **options: Any) -> uvicorn.Config:
    """uvicorn's settings for every listener the project opens (``wxkf up``, each service, ``wxkf
    puppet``, ``wxkf up --puppets``): :class:`HeaderDeadline`, the caller's address from the TCP peer
    never from ``X-Forwarded-For``, a bound on WebSocket messages, no lifespan, our logging, no
    ``server`` header. ``options`` add to them (host, port, graceful shutdown)."""
    return uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        ws_max_size=1024 * 1024,  # per WebSocket message; /puppetWxkfManager/ws allows far less
        proxy_headers=False,
        http=HeaderDeadline,
        **options,
    )


async def serve(
    app: Starlette,
    host: str,
    port: int,
    *,
    runtime: Runtime | None = None,
    on_started: Callable[[str], None] | None = None,
) -> None:
    """Run until SIGINT/SIGTERM, then return, so the caller stops its services and closes the runtime.

    With ``runtime``, the app gets ``/healthz``, ``/readyz`` and its 503 for database errors
    (:mod:`wxkf.health`), and serving ends by itself when the runtime's embedded database cannot be
    restarted: this then raises :class:`~wxkf.database.DatabaseError` (exit status 1 from the CLI),
    once the server has stopped, so the caller's cleanup still runs and a supervisor restarts us.

    ``on_started(url)`` runs once the socket listens (e.g. to print what to do next).

    Once shut down, uvicorn re-raises the signal it caught into the handler it found on entry: by default
    SIGTERM's would kill the process before the caller's cleanup, and asyncio.run's SIGINT handler would
    cancel that cleanup half-way. So the handler it finds is ours, and only asks it to exit (again).
    Logging is ours (``wxkf.logging``); uvicorn's access log stays off.

    Connections that send no request's headers in time are closed (:class:`HeaderDeadline`).
    The caller's address is the TCP peer's, never a header: uvicorn by default believes
    ``X-Forwarded-For`` from 127.0.0.1, which let any local process (or a reverse proxy passing the
    header through) claim an address inside ``WXKF_GATEWAY_NETWORKS`` or a fresh gettoken budget.
    """
    config = uvicorn_config(app, host=host, port=port, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN)
    server = _Server(config, on_started)
    failure = runtime.database.failure if runtime is not None else None
    if runtime is not None:
        health.install(app, runtime.database)
    # Everything built so far (modules, services, caches) lives as long as the process: keep it out
    # of the garbage collector's full passes, which otherwise stalled the hub 20-100 ms at a time.
    gc.collect()
    gc.freeze()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, server.handle_exit, sig, None)

    def give_up(_: object) -> None:
        server.should_exit = True

    if failure is not None:
        failure.add_done_callback(give_up)
    try:
        await server.serve()
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        if failure is not None:
            failure.remove_done_callback(give_up)
    if failure is not None and failure.done():
        raise DatabaseError(failure.result())
