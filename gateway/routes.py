"""HTTP shell around :mod:`gateway.intake`: ``/callback/{corpId}[/{app}]`` for WeCom."""

from __future__ import annotations

import logging
import time

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from gateway import metrics
from gateway.intake import Rejected, open_callback, verify_url
from gateway.service import Gateway
from wxkf.http import BodyTooLarge, read_body
from wxkf.logging import warn_limited

log = logging.getLogger(__name__)


def reject(request: Request, exc: Rejected) -> Response:
    metrics.REJECTED.labels(exc.reason).inc()
    warn_limited(
        log, exc.reason, "refused %s %s: %s (%s)", request.method, request.url.path, exc.message, exc.reason
    )
    return PlainTextResponse(f"{exc.reason}: {exc.message}", status_code=exc.status)


def callback_routes(gateway: Gateway, prefix: str = "/callback") -> list[BaseRoute]:
    async def verify(request: Request) -> Response:
        corp_id = request.path_params["corp_id"]
        try:
            plaintext = await verify_url(
                gateway.registry, corp_id, request.path_params.get("app"), request.query_params
            )
        except Rejected as exc:
            return reject(request, exc)
        return Response(plaintext, media_type="text/plain")

    async def receive(request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await read_body(request, gateway.config.max_body)
        except BodyTooLarge:
            return reject(
                request, Rejected(413, "too_large", f"body exceeds {gateway.config.max_body} bytes")
            )
        try:
            event = await open_callback(
                gateway.registry,
                request.path_params["corp_id"],
                request.path_params.get("app"),
                request.query_params,
                # the raw query, as forwarded to Node puppets; not request.url.query, which builds
                # and re-parses a whole URL per callback (~2 % of the hub's CPU at 500/s)
                request.scope["query_string"].decode("latin-1"),
                body,
            )
        except Rejected as exc:
            return reject(request, exc)
        try:
            stored = await gateway.accept(event)
        except Exception:
            log.exception("cannot store callback %s; WeCom will retry", event.id)
            metrics.REJECTED.labels("storage_unavailable").inc()
            return PlainTextResponse("storage unavailable, retry later", status_code=503)
        metrics.CALLBACKS.labels("stored" if stored else "duplicate").inc()
        metrics.ACK_SECONDS.observe(time.perf_counter() - started)
        return PlainTextResponse("success")

    return [
        Route(prefix + "/{corp_id}", verify, methods=["GET"]),
        Route(prefix + "/{corp_id}", receive, methods=["POST"]),
        Route(prefix + "/{corp_id}/{app}", verify, methods=["GET"]),
        Route(prefix + "/{corp_id}/{app}", receive, methods=["POST"]),
    ]
