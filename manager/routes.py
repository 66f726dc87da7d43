"""The Node manager's HTTP surface (docs/architecture.md, "Compatible surface"), with authentication added.

Request and response shapes are the Node ones, so existing puppets work unchanged. Refusals on the
puppet-facing routes answer as the Node manager did: HTTP 200 with a non-zero ``code`` and a
``message`` that says why (:func:`wxkf.http.as_compat`); Node puppets use axios, which throws on a
non-2xx answer and would crash instead of logging the reason. ``/callback/decrypted/{corpId}`` is
called by an upstream gateway, not a puppet, and its retry and dead-letter logic reads the status, so
its refusals keep their 4xx/5xx status (plain text).
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlencode

import httpx
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from manager.forwarded import GatewayAuth, UnregisteredAccounts, check_forwarded
from manager.registration import Registration
from manager.service import Manager
from token_service.routes import caller_of, gettoken_endpoint
from token_service.service import TokenUnavailable
from wecom.models import CORP_ID, OPEN_KFID
from wxkf.http import (
    Endpoint,
    Refusal,
    as_compat,
    as_compat_wecom,
    as_text,
    bearer_matches,
    check_id,
    parse_json,
    read_body,
    refusing,
)
from wxkf.tasks import log_failure

log = logging.getLogger(__name__)

PREFIX = "/puppetWxkfManager"
PROXY_ROUTE = PREFIX + "/wxkfRequestProxy/"
# WeCom API names the proxy relays: kf/... and media/..., lower-case words, no dot segments
PROXY_API = re.compile(r"(kf|media)(/[a-z0-9_]{1,64}){1,4}")
PROXY_BODY_LIMIT = 21 * 1024 * 1024  # media/upload allows 20 MB files
PROXY_BODY_TIMEOUT = 120.0  # seconds for such a body to arrive (other routes: wxkf.http.BODY_TIMEOUT)


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
    eventId: str | None = Field(default=None, max_length=64)


def bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def proxied_api(request: Request) -> str:
    """The WeCom API a proxy request names, checked on the raw path as the client sent it.

    Starlette's path parameter is decoded once, so ``kf/%252e%252e/user/get`` would arrive as
    ``kf/%2e%2e/user/get`` and go upstream unnormalised; the raw path is refused outright if it holds
    ``%``, ``#`` or ``?``, and what follows the route must be an API name (:data:`PROXY_API`).
    """
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    path = raw.decode("latin-1")
    if any(char in path for char in "%#?"):
        raise Refusal(403, "bad_proxy_path", "the proxy path must not contain '%', '#' or '?'")
    _, found, api = path.partition(PROXY_ROUTE)
    if not found or not PROXY_API.fullmatch(api) or api != request.path_params["path"]:
        raise Refusal(403, "bad_proxy_path", "the proxy only serves WeCom kf/... and media/... API names")
    return api


def compat_routes(
    manager: Manager, admin_token: str | None, gateways: GatewayAuth | None = None
) -> list[BaseRoute]:
    """The compat routes; ``gateways`` says who may forward events (None: nobody)."""
    registration = manager.registration
    gateways = gateways or GatewayAuth()
    unregistered = UnregisteredAccounts(manager.db, manager.puppets, manager.mailboxes)

    async def register(request: Request) -> Response:
        body = await parse_json(request, RegisterIn)
        check_id(body.corpId, CORP_ID, "corpId")
        if body.kfId:
            check_id(body.kfId, OPEN_KFID, "kfId")
        elif not body.kfName:
            raise Refusal(400, "missing_account", "kfId or kfName is required")
        if not registration.registration_token_ok(body.registrationToken or bearer(request)):
            raise Refusal(
                401,
                "registration_token",
                "registration token missing or wrong (WXKF_REGISTRATION_TOKEN is set)",
            )
        puppet, secret = await registration.register(
            Registration(
                corp_id=body.corpId,
                corp_secret=body.corpSecret,
                kf_id=body.kfId,
                kf_name=body.kfName,
                endpoint=body.endpoint,
                token=body.token,
                encoding_aes_key=body.encodingAESKey,
                caller=caller_of(request),
            )
        )
        return JSONResponse(
            {
                "code": 0,
                "message": "success",
                "openKfId": puppet.open_kfid,
                "webhookSecret": secret,
                "upPeriod": manager.up_period,
            }
        )

    async def deregister(request: Request) -> Response:
        body = await parse_json(request, DeregisterIn)
        puppet = await registration.authenticate(body.corpId, body.kfId, body.corpSecret or bearer(request))
        if puppet is None:
            raise Refusal(
                403,
                "unauthenticated",
                "deregistration needs the puppet's webhookSecret (bearer) or corpSecret; nothing changed "
                "(a puppet that is gone is marked offline at its first failed delivery)",
            )
        await registration.deregister(body.corpId, puppet.open_kfid)
        return JSONResponse({"code": 0, "message": "success"})

    async def heartbeat(request: Request) -> Response:
        body = await parse_json(request, DeregisterIn)
        puppet = await registration.authenticate(body.corpId, body.kfId, bearer(request))
        if puppet is None or not puppet.registered:
            raise Refusal(
                403, "unauthenticated", "unknown puppet or wrong bearer webhookSecret; register first"
            )
        await manager.heartbeat(puppet)
        # changes only when the hub may have missed callbacks (wxkf.up_period): the puppet then pulls
        return JSONResponse({"code": 0, "message": "success", "upPeriod": manager.up_period})

    async def info(request: Request) -> Response:
        """The registration record, for the puppet itself or the admin; anyone else learns nothing,
        not even whether the account exists or is online."""
        kf_id = check_id(request.path_params["kf_id"], OPEN_KFID, "kfId")
        token = bearer(request)
        admin = bearer_matches(request, admin_token)
        puppet = await manager.puppets.by_kf_id(kf_id) if token else None
        if admin and puppet is None:
            raise Refusal(404, "not_found", "no puppet registered for that kfId")
        if puppet is None or not (
            admin or await registration.authenticate(puppet.corp_id, puppet.open_kfid, token) is not None
        ):
            raise Refusal(
                401,
                "unauthenticated",
                "puppetWxkfInfo needs the puppet's bearer webhookSecret or corpSecret, or the admin token",
            )
        return JSONResponse(puppet.public(show_endpoint=True))

    async def proxy(request: Request) -> Response:
        api = proxied_api(request)
        query = dict(request.query_params)
        corp_id = query.pop("corpid", "") or request.headers.get("x-wxkf-corp-id", "")
        kf_id = query.pop("kfid", "") or request.headers.get("x-wxkf-kf-id", "")
        secret = query.pop("corpsecret", None) or bearer(request)
        query.pop("access_token", None)  # never relay a caller-supplied token
        puppet = await registration.authenticate(corp_id, kf_id, secret)
        if puppet is None:
            raise Refusal(
                403,
                "unauthenticated",
                "prove the account: corpid + kfid with corpsecret or bearer webhookSecret",
            )
        body = await read_body(request, PROXY_BODY_LIMIT, PROXY_BODY_TIMEOUT)
        try:
            issued = await manager.tokens.get(puppet.corp_id, puppet.corp_secret)
        except TokenUnavailable as exc:
            return JSONResponse({"errcode": exc.errcode, "errmsg": exc.errmsg})
        query["access_token"] = issued.token
        url = f"{manager.api_base}/{api}?{urlencode(query)}"
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type",)}
        try:
            upstream = await manager.http.request(
                request.method, url, content=body, headers=headers, timeout=30
            )
        except httpx.HTTPError as exc:
            raise Refusal(502, "wecom_unreachable", f"WeCom unreachable: {type(exc).__name__}") from None
        keep = {
            k: v for k, v in upstream.headers.items() if k.lower() in ("content-type", "content-disposition")
        }
        return Response(upstream.content, status_code=upstream.status_code, headers=keep)

    async def decrypted(request: Request) -> Response:
        gateways.check(request)
        corp_id = request.path_params["corp_id"]
        body = await parse_json(request, DecryptedIn)
        event_id = body.eventId or request.headers.get("webhook-id")
        await check_forwarded(manager.apps, unregistered, corp_id, body.openKfId, body.token, event_id)
        try:
            await manager.accept_decrypted(corp_id, body.openKfId, body.token, event_id)
        except Exception as exc:
            log_failure("storing a forwarded callback (the gateway will retry it)", exc, log)
            return PlainTextResponse("storage unavailable, retry later", status_code=503)
        return PlainTextResponse("roger")

    def compat(endpoint: Endpoint) -> Endpoint:
        return refusing(endpoint, as_compat)

    return [
        Route(PREFIX + "/register", compat(register), methods=["POST"]),
        Route(PREFIX + "/deregister", compat(deregister), methods=["POST"]),
        Route(PREFIX + "/heartbeat", compat(heartbeat), methods=["POST"]),
        Route(PREFIX + "/getToken", gettoken_endpoint(manager.tokens), methods=["GET"]),
        Route(PREFIX + "/puppetWxkfInfo/{kf_id}", compat(info), methods=["GET"]),
        Route(PROXY_ROUTE + "{path:path}", refusing(proxy, as_compat_wecom), methods=["GET", "POST"]),
        Route("/callback/decrypted/{corp_id}", refusing(decrypted, as_text), methods=["POST"]),
    ]
