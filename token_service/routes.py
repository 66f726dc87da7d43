"""HTTP face of the token service, in WeCom's own response shape so existing clients can point at it.

Every answer is HTTP 200 with WeCom's ``{errcode, errmsg}``, refusals included, as WeCom answers: the
clients this serves (the Node puppet, SDKs) read ``errcode`` and treat a non-2xx status as a crash. A
caller over its budget of upstream calls for unproven credentials gets 45009, WeCom's own "api freq
out of limit", with a ``Retry-After`` header. Only a malformed ``/token/invalidate`` body gets a 400.
"""

from __future__ import annotations

import logging
import re

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from token_service.service import OverBudget, TokenService, TokenUnavailable
from wxkf.http import Refusal, parse_json

log = logging.getLogger(__name__)

MISSING_CORPID = 41002
MISSING_SECRET = 41004
INVALID_CORPID = 40013
INVALID_CREDENTIAL = 40001

# What WeCom issues (corpids "ww" + hex, secrets base64url), with room to spare; anything else is
# refused locally with WeCom's own errcode, never sent upstream, and never reaches a log line raw.
CORPID = re.compile(r"[A-Za-z0-9_-]{1,64}")
SECRET = re.compile(r"[\x21-\x7e]{1,256}")


class InvalidateIn(BaseModel):
    corpid: str = Field(min_length=1, max_length=64)
    corpsecret: str = Field(min_length=1, max_length=256)
    access_token: str = Field(min_length=1, max_length=1024)


def wecom_error(errcode: int, errmsg: str) -> JSONResponse:
    return JSONResponse({"errcode": errcode, "errmsg": errmsg})


def refused(exc: TokenUnavailable) -> JSONResponse:
    response = wecom_error(exc.errcode, exc.errmsg)
    if isinstance(exc, OverBudget):
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return response


def malformed(corp_id: str, secret: str) -> JSONResponse | None:
    """WeCom's answer to credentials that cannot be valid, or None if they may be."""
    if not CORPID.fullmatch(corp_id):
        return wecom_error(INVALID_CORPID, "invalid corpid: letters, digits, '-' and '_', at most 64")
    if not SECRET.fullmatch(secret):
        return wecom_error(INVALID_CREDENTIAL, "invalid credential: corpsecret malformed")
    return None


def caller_of(request: Request) -> str:
    """The client address (what upstream calls for unproven pairs are charged to)."""
    return request.client.host if request.client is not None else ""


def gettoken_endpoint(service: TokenService):  # type: ignore[no-untyped-def]
    """``GET ?corpid&corpsecret`` -> ``{errcode, errmsg, access_token, expires_in}``."""

    async def gettoken(request: Request) -> Response:
        corp_id = request.query_params.get("corpid", "")
        secret = request.query_params.get("corpsecret", "")
        if not corp_id:
            return wecom_error(MISSING_CORPID, "missing corpid")
        if not secret:
            return wecom_error(MISSING_SECRET, "missing corpsecret")
        refusal = malformed(corp_id, secret)
        if refusal is not None:
            return refusal
        try:
            issued = await service.get(corp_id, secret, caller=caller_of(request))
        except TokenUnavailable as exc:
            log.debug("no token for corp %s: errcode %s", corp_id, exc.errcode)
            return refused(exc)
        now = service.clock()
        return JSONResponse(
            {"errcode": 0, "errmsg": "ok", "access_token": issued.token, "expires_in": issued.expires_in(now)}
        )

    return gettoken


def token_routes(service: TokenService) -> list[BaseRoute]:
    async def invalidate(request: Request) -> Response:
        try:
            body = await parse_json(request, InvalidateIn)
        except Refusal as exc:
            return JSONResponse({"errcode": 40058, "errmsg": exc.message}, status_code=exc.status)
        refusal = malformed(body.corpid, body.corpsecret)
        if refusal is not None:
            return refusal
        try:
            issued = await service.invalidate(
                body.corpid, body.corpsecret, body.access_token, caller=caller_of(request)
            )
        except TokenUnavailable as exc:
            return refused(exc)
        now = service.clock()
        return JSONResponse(
            {"errcode": 0, "errmsg": "ok", "access_token": issued.token, "expires_in": issued.expires_in(now)}
        )

    return [
        Route("/cgi-bin/gettoken", gettoken_endpoint(service), methods=["GET"]),
        Route("/token/invalidate", invalidate, methods=["POST"]),
    ]
