"""Serve a Starlette app with uvicorn in the current event loop (so services share one runtime)."""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
from collections.abc import Callable

import uvicorn
from starlette.applications import Starlette

from wxkf import health
from wxkf.database import DatabaseError
from wxkf.runtime import Runtime

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Requests still open this long after a stop signal are cancelled (their callers get no answer; WeCom
# retries). Part of the bounded shutdown: docs/architecture.md, "The database as a failure domain".
GRACEFUL_SHUTDOWN = 5


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
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        server_header=False,
        ws_max_size=1024 * 1024,  # per WebSocket message; /puppetWxkfManager/ws allows far less
    )
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
