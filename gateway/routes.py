"""HTTP shell around :mod:`gateway.intake`: ``/callback/{corpId}[/{app}]`` for WeCom."""

from __future__ import annotations

import logging
import time

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from gateway import metrics
from gateway.intake import open_callback, verify_url
from gateway.service import Gateway
from wxkf.http import Refusal, as_text, read_body, refusing

log = logging.getLogger(__name__)


def as_counted_text(refusal: Refusal) -> Response:
    """``reason: message`` as plain text, counted by reason in ``REJECTED``."""
    metrics.REJECTED.labels(refusal.reason).inc()
    return as_text(refusal)


def callback_routes(gateway: Gateway, prefix: str = "/callback") -> list[BaseRoute]:
    async def verify(request: Request) -> Response:
        corp_id = request.path_params["corp_id"]
        plaintext = await verify_url(
            gateway.registry, corp_id, request.path_params.get("app"), request.query_params
        )
        return Response(plaintext, media_type="text/plain")

    async def receive(request: Request) -> Response:
        started = time.perf_counter()
        body = await read_body(request, gateway.config.max_body)
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
        try:
            stored = await gateway.accept(event)
        except Exception:
            log.exception("cannot store callback %s; WeCom will retry", event.id)
            metrics.REJECTED.labels("storage_unavailable").inc()
            return PlainTextResponse("storage unavailable, retry later", status_code=503)
        metrics.CALLBACKS.labels("stored" if stored else "duplicate").inc()
        metrics.ACK_SECONDS.observe(time.perf_counter() - started)
        return PlainTextResponse("success")

    verifying, receiving = refusing(verify, as_counted_text), refusing(receive, as_counted_text)
    return [
        Route(prefix + "/{corp_id}", verifying, methods=["GET"]),
        Route(prefix + "/{corp_id}", receiving, methods=["POST"]),
        Route(prefix + "/{corp_id}/{app}", verifying, methods=["GET"]),
        Route(prefix + "/{corp_id}/{app}", receiving, methods=["POST"]),
    ]
