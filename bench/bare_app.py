"""The ceiling for the gateway benchmark: a Starlette endpoint that only reads the body.

``python -m bench.bare_app [--host 127.0.0.1] [--port 8080]`` serves ``POST /callback/{corp_id}``
(and ``GET /healthz``) through :func:`wxkf.server.serve`, the very function every wxkf service runs
uvicorn with, from ``asyncio.run`` as the ``wxkf`` CLI does: same uvicorn settings, same event loop
and HTTP parser. Whatever the gateway does beyond this (verify, decrypt, parse, store) is its cost.
"""

from __future__ import annotations

import argparse
import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route


async def callback(request: Request) -> Response:
    await request.body()
    return PlainTextResponse("success")


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def bare_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/callback/{corp_id}", callback, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def main() -> None:
    from wxkf.server import serve

    parser = argparse.ArgumentParser(prog="python -m bench.bare_app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    asyncio.run(serve(bare_app(), args.host, args.port))


if __name__ == "__main__":
    main()
