"""Serve a Starlette app with uvicorn in the current event loop (so services share one runtime)."""

from __future__ import annotations

import uvicorn
from starlette.applications import Starlette


async def serve(app: Starlette, host: str, port: int) -> None:
    """Run until SIGINT/SIGTERM. Logging is ours (``wxkf.logging``); uvicorn's access log stays off."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    await uvicorn.Server(config).serve()
