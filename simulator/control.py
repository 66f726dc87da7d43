"""Control routes that concern the whole simulator: state, configuration, clock, deliveries."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from simulator.clock import AdjustableClock
from simulator.http import control, courier, parse, sim, wants_wait
from wxkf.http import error


class AdvanceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(ge=0)


async def get_state(request: Request) -> Response:
    state = sim(request)
    wecom = state.wecom
    return JSONResponse(
        {
            "now": state.clock(),
            "wecom": {
                "corps": [corp.describe() for corp in wecom.directory.corps.values()],
                "robots": [robot.describe() for robot in wecom.robots.robots.values()],
            },
            "deliveries": len(courier(request).deliveries),
        }
    )


async def get_config(request: Request) -> Response:
    return JSONResponse(sim(request).config.model_dump(mode="json"))


async def get_clock(request: Request) -> Response:
    clock = sim(request).clock
    return JSONResponse({"now": clock(), "adjustable": isinstance(clock, AdjustableClock)})


async def advance_clock(request: Request) -> Response:
    clock = sim(request).clock
    if not isinstance(clock, AdjustableClock):
        return error("this simulator runs on a fixed clock; create it with an OffsetClock to move time", 409)
    spec = await parse(request, AdvanceIn)
    clock.advance(spec.seconds)
    return JSONResponse({"now": clock()})


async def list_deliveries(request: Request) -> Response:
    filters = {
        key: value for key, value in request.query_params.items() if key in ("corpid", "agentid", "kind")
    }
    found = [
        delivery.describe()
        for delivery in courier(request).deliveries.values()
        if all(delivery.request.meta.get(key) == value for key, value in filters.items())
    ]
    return JSONResponse({"deliveries": found})


async def get_delivery(request: Request) -> Response:
    the_courier = courier(request)
    delivery = the_courier.deliveries.get(request.path_params["id"])
    if delivery is None:
        raise LookupError(f"no delivery {request.path_params['id']}")
    if wants_wait(request):
        await the_courier.wait([delivery])
    return JSONResponse(delivery.describe())


def routes() -> list[BaseRoute]:
    return [
        Route("/sim/state", control(get_state), methods=["GET"]),
        Route("/sim/config", control(get_config), methods=["GET"]),
        Route("/sim/clock", control(get_clock), methods=["GET"]),
        Route("/sim/clock/advance", control(advance_clock), methods=["POST"]),
        Route("/sim/deliveries", control(list_deliveries), methods=["GET"]),
        Route("/sim/deliveries/{id}", control(get_delivery), methods=["GET"]),
    ]
