"""HTTP plumbing shared by every service: bounded body reads, admin auth, health and metrics routes."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

Endpoint = Callable[[Request], Awaitable[Response]]
M = TypeVar("M", bound=BaseModel)


class BodyTooLarge(Exception):
    pass


class BadRequest(Exception):
    """Raised by request parsing helpers; :func:`json_endpoint` turns it into a 400."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


async def read_body(request: Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes; refuse early on a large Content-Length, and while streaming."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyTooLarge
        except ValueError:
            raise BodyTooLarge from None
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_json(request: Request, model: type[M], limit: int = 64 * 1024, *, empty: Any = None) -> M:
    """Validate a JSON body into ``model``; any problem becomes a :class:`BadRequest` with the reason.

    An empty (or blank) body is read as ``empty``.
    """
    try:
        body = await read_body(request, limit)
    except BodyTooLarge:
        raise BadRequest(f"body exceeds {limit} bytes", 413) from None
    try:
        data = json.loads(body) if body.strip() else empty
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "body"
        raise BadRequest(f"{where}: {first.get('msg')}") from None


def error(message: str, status: int = 400, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def bearer_matches(request: Request, token: str | None) -> bool:
    if not token:
        return False
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())


def admin_only(token: str | None, endpoint: Endpoint) -> Endpoint:
    """Wrap an admin endpoint: 401 without the bearer token, 403 when no admin token is configured."""

    async def guarded(request: Request) -> Response:
        if not token:
            return error("admin API disabled: set WXKF_ADMIN_TOKEN", 403)
        if not bearer_matches(request, token):
            return error("missing or wrong bearer token", 401)
        try:
            return await endpoint(request)
        except BadRequest as exc:
            return error(exc.message, exc.status)

    return guarded


def common_routes() -> list[BaseRoute]:
    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return [Route("/healthz", healthz), Route("/metrics", metrics)]
