"""HTTP plumbing shared by every service: bounded body reads, admin auth, health and metrics routes."""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

Endpoint = Callable[[Request], Awaitable[Response]]
M = TypeVar("M", bound=BaseModel)
log = logging.getLogger(__name__)


class Refusal(Exception):
    """A request refused, for every route of every service: the one "status + message" exception.

    ``status`` is the HTTP status, ``reason`` a short machine-readable word (a metric label, the
    prefix of a plain-text answer), ``message`` says why in words the caller can act on. Routes raise
    it; :func:`refusing` (or :func:`refused`) turns it into the route family's answer and logs it.
    """

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    def __repr__(self) -> str:
        return f"Refusal({self.status}, {self.reason!r}, {self.message!r})"


class BodyTooLarge(Refusal):
    """The body is over the route's limit (a :class:`Refusal` with status 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, "too_large", f"body exceeds {limit} bytes")


Render = Callable[[Refusal], Response]


def as_json(refusal: Refusal) -> Response:
    """Admin and service APIs: ``{"error": message, "reason": reason}`` with the refusal's status."""
    return error(refusal.message, refusal.status, reason=refusal.reason)


def as_text(refusal: Refusal) -> Response:
    """Plain ``reason: message`` with the refusal's status (WeCom's callback routes, gateways)."""
    return PlainTextResponse(f"{refusal.reason}: {refusal.message}", status_code=refusal.status)


def as_compat(refusal: Refusal) -> Response:
    """The Node manager's form: HTTP 200 and ``{code: <non-zero>, message}``. Node puppets use axios,
    which throws on any non-2xx answer; with a 200 they log ``message`` instead of crashing."""
    return JSONResponse({"code": refusal.status, "message": refusal.message})


def as_compat_wecom(refusal: Refusal) -> Response:
    """:func:`as_compat` plus WeCom's own error fields, for a route whose successful answers are WeCom's
    (the request proxy): a client that checks ``errcode`` sees a non-zero one and ``errmsg`` says why.
    Both codes are the refusal's HTTP status, which is never one of WeCom's errcodes."""
    body = {"code": refusal.status, "message": refusal.message}
    return JSONResponse({**body, "errcode": refusal.status, "errmsg": refusal.message})


def refused(request: Request, refusal: Refusal, render: Render = as_json) -> Response:
    """The one place a refusal becomes an answer: logged as a warning, rendered by ``render``."""
    log.warning(
        "refused %s %.200r: %s (%s, %d)",
        request.method,
        request.scope.get("path", ""),
        refusal.message,
        refusal.reason,
        refusal.status,
    )
    return render(refusal)


def refusing(endpoint: Endpoint, render: Render = as_json) -> Endpoint:
    """Wrap ``endpoint`` so a :class:`Refusal` it raises is answered with ``render``."""

    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Refusal as exc:
            return refused(request, exc, render)

    return guarded


async def read_body(request: Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes; refuse early on a large Content-Length, and while streaming."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_large = int(declared) > limit
        except ValueError:
            raise Refusal(400, "bad_length", "Content-Length is not a number") from None
        if too_large:
            raise BodyTooLarge(limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_json(request: Request, model: type[M], limit: int = 64 * 1024, *, empty: Any = None) -> M:
    """Validate a JSON body into ``model``; any problem is a :class:`Refusal` that says what.

    An empty (or blank) body is read as ``empty``.
    """
    body = await read_body(request, limit)
    try:
        data = json.loads(body) if body.strip() else empty
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Refusal(400, "bad_json", f"body is not JSON: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "body"
        raise Refusal(400, "bad_field", f"{where}: {first.get('msg')}") from None


def check_id(value: str, pattern: re.Pattern[str], what: str) -> str:
    """``value`` if all of it matches ``pattern``; else a 400 :class:`Refusal` naming ``what``."""
    if not pattern.fullmatch(value):
        shown = value[:40] + ("..." if len(value) > 40 else "")
        raise Refusal(400, "bad_id", f"{what} {shown!r} is not a valid id")
    return value


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
            raise Refusal(403, "admin_disabled", "admin API disabled: set WXKF_ADMIN_TOKEN")
        if not bearer_matches(request, token):
            raise Refusal(401, "unauthorized", "missing or wrong bearer token")
        return await endpoint(request)

    return refusing(guarded)


def common_routes() -> list[BaseRoute]:
    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return [Route("/healthz", healthz), Route("/metrics", metrics)]
