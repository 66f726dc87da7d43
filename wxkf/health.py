"""Liveness, readiness, and the answer every route gives while the database is down.

Two probes, because they answer different questions (docs/architecture.md, "The database as a failure
domain"):

- ``GET /healthz`` — liveness: *should this process be restarted?* 200 while it serves or is repairing
  itself (the embedded database restarting, MongoDB electing a primary), with the database's state in
  the body, never an "ok" that hides a problem; 503 once it has given up (the embedded database could
  not be restarted: the process is on its way out, exit status 1). It does no I/O.
- ``GET /readyz`` — readiness: *may traffic be sent here now?* 200 only when a read on the database
  succeeds within :data:`READY_TIMEOUT`; else 503 with the reason. Concurrent and repeated calls within
  :data:`READY_CACHE` seconds share one probe, so the unauthenticated route cannot multiply load.

Any route whose handler meets a database error (:class:`~pymongo.errors.PyMongoError`) answers 503 with
``Retry-After`` and a reason in each shape our clients read (``error`` for the admin CLI, ``errcode`` and
``errmsg`` for WeCom-style clients, ``code`` and ``message`` for Node puppets), never a 500.
"""

from __future__ import annotations

import logging
import time

import pymongo
from pymongo.errors import PyMongoError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from wxkf.database import PROBE_DB, DatabaseState
from wxkf.logging import warn_limited
from wxkf.single_flight import SingleFlight

log = logging.getLogger(__name__)

READY_TIMEOUT = 2.0
READY_CACHE = 1.0
RETRY_AFTER = "5"
UNAVAILABLE = "database unavailable, retry later"
WECOM_SYSTEM_BUSY = -1


class Readiness:
    """The ``/readyz`` probe: one read on the database, shared by callers within ``READY_CACHE``."""

    def __init__(self, state: DatabaseState) -> None:
        self.state = state
        self._flight: SingleFlight[str | None] = SingleFlight()
        self._last: tuple[float, str | None] | None = None

    async def problem(self) -> str | None:
        """None when ready; else why not (no addresses or secrets: anyone may read it)."""
        known = self.state.known_problem()  # the driver's view may lag a restart: probe instead
        if known is not None:
            return known
        if self._last is not None and time.monotonic() - self._last[0] < READY_CACHE:
            return self._last[1]
        return await self._flight.run("probe", self._probe)

    async def _probe(self) -> str | None:
        try:
            with pymongo.timeout(READY_TIMEOUT):
                await self.state.client[PROBE_DB].probe.find_one({"_id": "probe"})
        except PyMongoError as exc:
            log.debug("readiness probe failed: %s", exc)
            answer: str | None = f"database read failed ({type(exc).__name__})"
        else:
            answer = None
        self._last = (time.monotonic(), answer)
        return answer


def health_routes(state: DatabaseState) -> list[BaseRoute]:
    readiness = Readiness(state)

    async def healthz(request: Request) -> Response:
        problem = state.problem()
        if state.failure.done():
            return JSONResponse({"status": "failing", "database": problem}, status_code=503)
        if problem is not None:
            return JSONResponse({"status": "degraded", "database": problem})
        return JSONResponse({"status": "ok", "database": "ok"})

    async def readyz(request: Request) -> Response:
        problem = await readiness.problem()
        if problem is not None:
            headers = {"retry-after": RETRY_AFTER}
            return JSONResponse({"status": "unready", "reason": problem}, status_code=503, headers=headers)
        return JSONResponse({"status": "ready"})

    return [Route("/healthz", healthz), Route("/readyz", readyz)]


async def database_unavailable(request: Request, exc: Exception) -> Response:
    """The 503 for a request whose handler hit a database error."""
    warn_limited(
        log,
        "database_unavailable",
        "database unavailable for %s %s: %s",
        request.method,
        request.url.path,
        str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__,
    )
    body = {
        "error": UNAVAILABLE,
        "errcode": WECOM_SYSTEM_BUSY,
        "errmsg": UNAVAILABLE,
        "code": 503,
        "message": UNAVAILABLE,
    }
    return JSONResponse(body, status_code=503, headers={"retry-after": RETRY_AFTER})


def install(app: Starlette, state: DatabaseState) -> None:
    """Put ``/healthz`` and ``/readyz`` in front of ``app``'s routes (replacing a plain ``/healthz``)
    and answer its database errors with :func:`database_unavailable`. Call before serving."""
    app.router.routes[:0] = health_routes(state)
    app.add_exception_handler(PyMongoError, database_unavailable)
