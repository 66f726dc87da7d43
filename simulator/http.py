"""Plumbing shared by the control routes of every simulated platform.

Control routes answer like the project's other admin APIs (JSON, ``{"error": ...}`` with a 4xx
status), not like WeCom: they are the developer's remote control, not part of any vendor protocol.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from simulator.delivery import Courier
from simulator.state import SimState
from simulator.wecom.errcodes import ApiError
from wxkf.http import Refusal, error, parse_json

M = TypeVar("M", bound=BaseModel)
Endpoint = Callable[[Request], Awaitable[Response]]
MAX_CONTROL_BODY = 8 * 1024 * 1024


def sim(request: Request) -> SimState:
    state: SimState = request.app.state.sim
    return state


def courier(request: Request) -> Courier:
    value: Courier = request.app.state.courier
    return value


def wants_wait(request: Request) -> bool:
    """``?wait=true``: answer only once the deliveries this request caused are finished."""
    return request.query_params.get("wait", "").lower() in ("1", "true", "yes")


async def parse(request: Request, model: type[M]) -> M:
    """The JSON body validated into ``model``; an empty body counts as ``{}``."""
    return await parse_json(request, model, MAX_CONTROL_BODY, empty={})


def control(endpoint: Endpoint) -> Endpoint:
    """Turn the exceptions of state lookups and rules into JSON errors."""

    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Refusal as exc:
            return error(exc.message, exc.status)
        except LookupError as exc:
            return error(str(exc.args[0]) if exc.args else "not found", 404)
        except ApiError as exc:
            return error(exc.errmsg, 400, errcode=exc.errcode)
        except ValueError as exc:
            return error(str(exc), 400)

    return guarded
