"""The Node manager's HTTP surface (``../shared/docs/compat-contract.md``), with authentication added.

Request and response shapes are the Node ones, so existing puppets work unchanged; refusals carry a
non-zero ``code`` and a ``message`` that says why, with a 4xx status.
"""

from __future__ import annotations

import logging
from urllib.parse import urlencode

import httpx
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from manager.registration import Registration, RegistrationRefused
from manager.service import Manager
from token_service.routes import gettoken_endpoint
from token_service.service import TokenUnavailable
from wxkf.http import BadRequest, BodyTooLarge, bearer_matches, parse_json, read_body

log = logging.getLogger(__name__)

PREFIX = "/puppetWxkfManager"
PROXY_PATHS = ("kf/", "media/")
PROXY_BODY_LIMIT = 21 * 1024 * 1024  # media/upload allows 20 MB files


class RegisterIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    kfId: str = Field(default="", max_length=128)
    kfName: str = Field(default="", max_length=128)
    endpoint: str = Field(min_length=1, max_length=2048)
    corpId: str = Field(min_length=1, max_length=64)
    corpSecret: str = Field(min_length=1, max_length=256)
    token: str = Field(min_length=1, max_length=128)
    encodingAESKey: str = Field(min_length=43, max_length=43)
    registrationToken: str | None = Field(default=None, max_length=256)


class DeregisterIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    kfId: str = Field(default="", max_length=128)
    kfName: str = Field(default="", max_length=128)
    corpId: str = Field(min_length=1, max_length=64)
    corpSecret: str | None = Field(default=None, max_length=256)


class DecryptedIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    token: str = Field(min_length=1, max_length=512)
    openKfId: str = Field(min_length=1, max_length=128)
    eventId: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")


def refusal(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status)


def bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def compat_routes(manager: Manager, admin_token: str | None) -> list[BaseRoute]:
    async def register(request: Request) -> Response:
        try:
            body = await parse_json(request, RegisterIn)
        except BadRequest as exc:
            return refusal(exc.status, exc.message)
        if not body.kfId and not body.kfName:
            return refusal(400, "kfId or kfName is required")
        if not manager.registration.registration_token_ok(body.registrationToken or bearer(request)):
            return refusal(401, "registration token missing or wrong (WXKF_REGISTRATION_TOKEN is set)")
        registration = Registration(
            corp_id=body.corpId,
            corp_secret=body.corpSecret,
            kf_id=body.kfId,
            kf_name=body.kfName,
            endpoint=body.endpoint,
            token=body.token,
            encoding_aes_key=body.encodingAESKey,
        )
        try:
            puppet, secret = await manager.registration.register(registration)
        except RegistrationRefused as exc:
            log.warning("registration refused for corp %s: %s", body.corpId, exc.message)
            return refusal(exc.status, exc.message)
        return JSONResponse(
            {"code": 0, "message": "success", "openKfId": puppet.open_kfid, "webhookSecret": secret}
        )

    async def deregister(request: Request) -> Response:
        try:
            body = await parse_json(request, DeregisterIn)
        except BadRequest as exc:
            return refusal(exc.status, exc.message)
        puppet = await manager.registration.authenticate(
            body.corpId, body.kfId, body.corpSecret or bearer(request)
        )
        if puppet is None:
            return refusal(403, "deregistration needs the puppet's webhookSecret (bearer) or corpSecret")
        await manager.registration.deregister(body.corpId, puppet.open_kfid)
        return JSONResponse({"code": 0, "message": "success"})

    async def heartbeat(request: Request) -> Response:
        try:
            body = await parse_json(request, DeregisterIn)
        except BadRequest as exc:
            return refusal(exc.status, exc.message)
        puppet = await manager.registration.authenticate(body.corpId, body.kfId, bearer(request))
        if puppet is None or not puppet.registered:
            return refusal(403, "unknown puppet or wrong bearer webhookSecret; register first")
        await manager.heartbeat(puppet)
        return JSONResponse({"code": 0, "message": "success"})

    async def info(request: Request) -> Response:
        puppet = await manager.puppets.by_kf_id(request.path_params["kf_id"])
        if puppet is None:
            return refusal(404, "no puppet registered for that kfId")
        token = bearer(request)
        trusted = bool(token) and (
            bearer_matches(request, admin_token)
            or await manager.registration.authenticate(puppet.corp_id, puppet.open_kfid, token) is not None
        )
        return JSONResponse(puppet.public(show_endpoint=trusted))

    async def proxy(request: Request) -> Response:
        path = request.path_params["path"]
        if not path.startswith(PROXY_PATHS) or ".." in path:
            return refusal(403, "the proxy only serves kf/ and media/ APIs")
        query = dict(request.query_params)
        corp_id = query.pop("corpid", "") or request.headers.get("x-wxkf-corp-id", "")
        kf_id = query.pop("kfid", "") or request.headers.get("x-wxkf-kf-id", "")
        secret = query.pop("corpsecret", None) or bearer(request)
        query.pop("access_token", None)  # never relay a caller-supplied token
        puppet = await manager.registration.authenticate(corp_id, kf_id, secret)
        if puppet is None:
            return refusal(403, "prove the account: corpid + kfid with corpsecret or bearer webhookSecret")
        try:
            body = await read_body(request, PROXY_BODY_LIMIT)
        except BodyTooLarge:
            return refusal(413, "body too large")
        try:
            issued = await manager.tokens.get(puppet.corp_id, puppet.corp_secret)
        except TokenUnavailable as exc:
            return JSONResponse({"errcode": exc.errcode, "errmsg": exc.errmsg})
        query["access_token"] = issued.token
        url = f"{manager.api_base}/{path}?{urlencode(query)}"
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type",)}
        try:
            upstream = await manager.http.request(
                request.method, url, content=body, headers=headers, timeout=30
            )
        except httpx.HTTPError as exc:
            return refusal(502, f"WeCom unreachable: {type(exc).__name__}")
        keep = {
            k: v for k, v in upstream.headers.items() if k.lower() in ("content-type", "content-disposition")
        }
        return Response(upstream.content, status_code=upstream.status_code, headers=keep)

    async def decrypted(request: Request) -> Response:
        try:
            body = await parse_json(request, DecryptedIn)
        except BadRequest as exc:
            return PlainTextResponse(exc.message, status_code=exc.status)
        try:
            await manager.accept_decrypted(
                request.path_params["corp_id"],
                body.openKfId,
                body.token,
                body.eventId or request.headers.get("webhook-id"),
            )
        except Exception:
            log.exception("cannot queue decrypted callback")
            return PlainTextResponse("storage unavailable, retry later", status_code=503)
        return PlainTextResponse("roger")

    return [
        Route(PREFIX + "/register", register, methods=["POST"]),
        Route(PREFIX + "/deregister", deregister, methods=["POST"]),
        Route(PREFIX + "/heartbeat", heartbeat, methods=["POST"]),
        Route(PREFIX + "/getToken", gettoken_endpoint(manager.tokens), methods=["GET"]),
        Route(PREFIX + "/puppetWxkfInfo/{kf_id}", info, methods=["GET"]),
        Route(PREFIX + "/wxkfRequestProxy/{path:path}", proxy, methods=["GET", "POST"]),
        Route("/callback/decrypted/{corp_id}", decrypted, methods=["POST"]),
    ]
