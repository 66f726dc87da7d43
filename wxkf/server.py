"""Serve a Starlette app with uvicorn in the current event loop (so services share one runtime)."""

from __future__ import annotations

import asyncio
import gc
import signal

import uvicorn
from starlette.applications import Starlette

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def serve(app: Starlette, host: str, port: int) -> None:
    """Run until SIGINT/SIGTERM, then return, so the caller stops its services and closes the runtime.

    Once shut down, uvicorn re-raises the signal it caught into the handler it found on entry: by default
    SIGTERM's would kill the process before the caller's cleanup, and asyncio.run's SIGINT handler would
    cancel that cleanup half-way. So the handler it finds is ours, and only asks it to exit (again).
    Logging is ours (``wxkf.logging``); uvicorn's access log stays off.

    The caller's address is the TCP peer's, never a header: uvicorn by default believes
    ``X-Forwarded-For`` from 127.0.0.1, which let any local process (or a reverse proxy passing the
    header through) claim an address inside ``WXKF_GATEWAY_NETWORKS`` or a fresh gettoken budget.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        server_header=False,
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    # Everything built so far (modules, services, caches) lives as long as the process: keep it out
    # of the garbage collector's full passes, which otherwise stalled the hub 20-100 ms at a time.
    gc.collect()
    gc.freeze()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, server.handle_exit, sig, None)
    try:
        await server.serve()
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
