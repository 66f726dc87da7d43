"""Assemble the simulator: state, routes, and the lifespan that owns callback deliveries."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette

from simulator import control
from simulator.clock import OffsetClock
from simulator.delivery import Courier
from simulator.state import SimState
from simulator.wecom import api as wecom_api
from simulator.wecom import control as wecom_control

log = logging.getLogger(__name__)


def create_app(
    state: SimState | None = None,
    *,
    seed: Path | dict[str, Any] | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The simulator as an ASGI app.

    ``state`` is used as is (its own clock wins over ``clock``) and ``seed`` is added to it; without
    ``state`` a new one is made from ``seed`` (which may then carry a ``config``) on ``clock``. Time
    can be moved through the control API only if the clock has an ``advance`` method
    (:class:`~simulator.clock.OffsetClock`, or a test's fake clock).
    """
    if state is None:
        state = SimState.from_seed(seed, clock) if seed is not None else SimState(clock=clock)
    elif seed is not None:
        state.load(seed)
    courier = Courier(state.config, state.clock)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with courier:
            yield

    app = Starlette(
        routes=[*control.routes(), *wecom_control.routes(), *wecom_api.routes()], lifespan=lifespan
    )
    app.state.sim = state
    app.state.courier = courier
    return app


def serve(host: str, port: int, seed: Path | None = None) -> None:
    """Run the simulator until interrupted: real time plus an offset ``/sim/clock/advance`` moves."""
    state = SimState.from_seed(seed, OffsetClock()) if seed is not None else SimState(clock=OffsetClock())
    log.info("WeCom simulator: API under /cgi-bin, control API under /sim (see docs/simulator.md)")
    uvicorn.run(
        create_app(state),
        host=host,
        port=port,
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=5,
    )
