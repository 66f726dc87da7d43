"""The ``/cgi-bin`` routes: WeCom's HTTP surface over :class:`~simulator.wecom.world.WeCom`.

Like WeCom, every answer is HTTP 200 with ``{"errcode": 0, "errmsg": "ok", ...}`` or an errcode; the
access_token is checked first, then the per-corp API limit, then the body. Handlers only translate
between JSON and the rule methods.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message

from simulator.wecom import errcodes as E
from simulator.wecom.directory import App
from simulator.wecom.errcodes import ApiError
from simulator.wecom.world import WeCom
from wxkf.http import BodyTooLarge, read_body

MAX_JSON_BODY = 4 * 1024 * 1024  # a robot image is 2 MB, i.e. ~2.7 MB of base64
UPLOAD_OVERHEAD = 64 * 1024

Result = dict[str, Any]


def ok(result: Result | None = None) -> JSONResponse:
    return JSONResponse({"errcode": 0, "errmsg": "ok", **(result or {})})


def failed(exc: ApiError, status: int = 200) -> JSONResponse:
    return JSONResponse(exc.payload(), status_code=status)


def world(request: Request) -> WeCom:
    wecom: WeCom = request.app.state.sim.wecom
    return wecom


class Body:
    """A JSON request body with WeCom-style field access: a bad field is an :class:`ApiError`."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def raw(self, name: str) -> Any:
        return self.data.get(name)

    def optional(self, name: str) -> str | None:
        value = self.data.get(name)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise ApiError(E.INVALID_PARAMETER, f"{name} must be a string")
        return value

    def required(self, name: str, errcode: int = E.INVALID_PARAMETER) -> str:
        value = self.optional(name)
        if value is None:
            raise ApiError(errcode, f"{name} missing")
        return value

    def integer(self, name: str, default: int) -> int:
        value = self.data.get(name, default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ApiError(E.INVALID_PARAMETER, f"{name} must be an integer")
        return value

    def strings(self, name: str) -> list[str]:
        value = self.data.get(name)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ApiError(E.INVALID_PARAMETER, f"{name} must be a list of strings")
        return value


Handler = Callable[[WeCom, App, Body], Result]


async def json_body(request: Request) -> Body:
    try:
        raw = await read_body(request, MAX_JSON_BODY)
    except BodyTooLarge:
        raise ApiError(E.CONTENT_TOO_LONG, f"request body larger than {MAX_JSON_BODY} bytes") from None
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(E.BAD_JSON, "data format error: body is not JSON") from None
    if not isinstance(data, dict):
        raise ApiError(E.BAD_JSON, "data format error: body is not a JSON object")
    return Body(data)


async def read_upload(request: Request, limit: int) -> tuple[str, bytes, str]:
    """``(filename, content, content_type)`` of the multipart field ``media``."""
    try:
        raw = await read_body(request, limit + UPLOAD_OVERHEAD)
    except BodyTooLarge:
        raise ApiError(E.INVALID_FILE_SIZE, f"media larger than {limit} bytes") from None

    async def replay() -> Message:
        return {"type": "http.request", "body": raw, "more_body": False}

    try:
        async with Request(request.scope, replay).form() as form:
            field = form.get("media")
            if not isinstance(field, UploadFile):
                raise ApiError(E.EMPTY_MEDIA, "multipart field 'media' missing")
            content = await field.read()
            return field.filename or "media", content, field.content_type or ""
    except (HTTPException, AssertionError, ValueError) as exc:  # malformed multipart, or no parser
        raise ApiError(E.EMPTY_MEDIA, f"media missing: {exc}") from None


def authenticated(request: Request, api: str) -> App:
    wecom = world(request)
    app = wecom.tokens.authenticate(request.query_params.get("access_token"))
    wecom.count_api_call(app.corp_id, api)
    return app


def json_api(api: str, handler: Handler) -> Route:
    async def endpoint(request: Request) -> Response:
        try:
            app = authenticated(request, api)
            body = await json_body(request)
            return ok(handler(world(request), app, body))
        except ApiError as exc:
            return failed(exc)

    return Route(f"/cgi-bin/{api}", endpoint, methods=["POST"], name=api)


# -- access tokens -------------------------------------------------------------------------------


async def gettoken(request: Request) -> Response:
    wecom = world(request)
    query = request.query_params
    try:
        issued = wecom.tokens.gettoken(query.get("corpid"), query.get("corpsecret"))
    except ApiError as exc:
        return failed(exc)
    return ok({"access_token": issued.token, "expires_in": issued.expires_in(wecom.clock())})


# -- kf ------------------------------------------------------------------------------------------


def account_list(wecom: WeCom, app: App, body: Body) -> Result:
    return {"account_list": wecom.kf.account_list(app, body.integer("offset", 0), body.integer("limit", 100))}


def account_add(wecom: WeCom, app: App, body: Body) -> Result:
    name = body.required("name", E.INVALID_ACCOUNT_NAME)
    account = wecom.kf.account_add(app, name, body.required("media_id", E.MISSING_MEDIA_ID))
    return {"open_kfid": account.open_kfid}


def account_del(wecom: WeCom, app: App, body: Body) -> Result:
    wecom.kf.account_del(app, body.required("open_kfid", E.INVALID_OPEN_KFID))
    return {}


def account_update(wecom: WeCom, app: App, body: Body) -> Result:
    open_kfid = body.required("open_kfid", E.INVALID_OPEN_KFID)
    wecom.kf.account_update(app, open_kfid, body.optional("name"), body.optional("media_id"))
    return {}


def add_contact_way(wecom: WeCom, app: App, body: Body) -> Result:
    return {
        "url": wecom.kf.add_contact_way(
            app, body.required("open_kfid", E.INVALID_OPEN_KFID), body.optional("scene")
        )
    }


def customer_batchget(wecom: WeCom, app: App, body: Body) -> Result:
    context = body.integer("need_enter_session_context", 0)
    if context not in (0, 1):
        raise ApiError(E.INVALID_PARAMETER, "need_enter_session_context must be 0 or 1")
    customers, invalid = wecom.kf.customer_batchget(app, body.strings("external_userid_list"), bool(context))
    return {"customer_list": customers, "invalid_external_userid": invalid}


def sync_msg(wecom: WeCom, app: App, body: Body) -> Result:
    return wecom.kf.sync_msg(
        app,
        body.required("open_kfid", E.INVALID_OPEN_KFID),
        cursor=body.optional("cursor"),
        token=body.optional("token"),
        limit=body.integer("limit", 1000),
        voice_format=body.integer("voice_format", 0),
    )


def send_msg(wecom: WeCom, app: App, body: Body) -> Result:
    msgtype = body.required("msgtype", E.INVALID_MSGTYPE)
    msgid = wecom.kf.send_msg(
        app,
        body.required("touser", E.INVALID_EXTERNAL_USERID),
        body.required("open_kfid", E.INVALID_OPEN_KFID),
        msgtype,
        body.raw(msgtype),
        body.optional("msgid"),
    )
    return {"msgid": msgid}


def send_msg_on_event(wecom: WeCom, app: App, body: Body) -> Result:
    msgtype = body.required("msgtype", E.INVALID_MSGTYPE)
    msgid = wecom.kf.send_msg_on_event(
        app, body.required("code"), msgtype, body.raw(msgtype), body.optional("msgid")
    )
    return {"msgid": msgid}


def service_state_get(wecom: WeCom, app: App, body: Body) -> Result:
    return wecom.kf.service_state_get(
        app,
        body.required("open_kfid", E.INVALID_OPEN_KFID),
        body.required("external_userid", E.INVALID_EXTERNAL_USERID),
    )


def service_state_trans(wecom: WeCom, app: App, body: Body) -> Result:
    if "service_state" not in body.data:
        raise ApiError(E.INVALID_PARAMETER, "service_state missing")
    msg_code = wecom.kf.service_state_trans(
        app,
        body.required("open_kfid", E.INVALID_OPEN_KFID),
        body.required("external_userid", E.INVALID_EXTERNAL_USERID),
        body.integer("service_state", -1),
        body.optional("servicer_userid"),
    )
    return {"msg_code": msg_code} if msg_code else {}


# -- media ---------------------------------------------------------------------------------------


def _upload_limit(wecom: WeCom, type: str) -> int:
    return wecom.config.media_max_size.get(type, max(wecom.config.media_max_size.values(), default=0))


async def media_upload(request: Request) -> Response:
    wecom = world(request)
    try:
        app = authenticated(request, "media/upload")
        type = request.query_params.get("type", "")
        filename, content, content_type = await read_upload(request, _upload_limit(wecom, type))
        media = wecom.media.upload(app.corp_id, type, filename, content, content_type)
    except ApiError as exc:
        return failed(exc)
    return ok({"type": media.type, "media_id": media.media_id, "created_at": str(int(media.created_at))})


async def media_get(request: Request) -> Response:
    wecom = world(request)
    try:
        app = authenticated(request, "media/get")
        media = wecom.media.get(app.corp_id, request.query_params.get("media_id", ""))
    except ApiError as exc:
        return failed(exc)
    disposition = f'attachment; filename="{media.filename}"'
    return Response(
        media.content, media_type=media.content_type, headers={"Content-Disposition": disposition}
    )


# -- group robots --------------------------------------------------------------------------------


async def webhook_send(request: Request) -> Response:
    wecom = world(request)
    try:
        body = await json_body(request)
        wecom.robots.send(request.query_params.get("key"), body.data)
    except ApiError as exc:
        return failed(exc)
    return ok()


async def webhook_upload_media(request: Request) -> Response:
    wecom = world(request)
    try:
        key = request.query_params.get("key")
        wecom.robots.robot(key)
        type = request.query_params.get("type", "")
        filename, content, content_type = await read_upload(request, _upload_limit(wecom, type))
        media = wecom.robots.upload_media(key, type, filename, content, content_type)
    except ApiError as exc:
        return failed(exc)
    return ok({"type": media.type, "media_id": media.media_id, "created_at": str(int(media.created_at))})


async def unknown_api(request: Request) -> Response:
    path = request.path_params["path"]
    return failed(
        ApiError(404, f"the simulator does not implement {request.method} /cgi-bin/{path}"), status=404
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/cgi-bin/gettoken", gettoken, methods=["GET"]),
        json_api("kf/account/list", account_list),
        json_api("kf/account/add", account_add),
        json_api("kf/account/del", account_del),
        json_api("kf/account/update", account_update),
        json_api("kf/add_contact_way", add_contact_way),
        json_api("kf/customer/batchget", customer_batchget),
        json_api("kf/sync_msg", sync_msg),
        json_api("kf/send_msg", send_msg),
        json_api("kf/send_msg_on_event", send_msg_on_event),
        json_api("kf/service_state/get", service_state_get),
        json_api("kf/service_state/trans", service_state_trans),
        Route("/cgi-bin/media/upload", media_upload, methods=["POST"]),
        Route("/cgi-bin/media/get", media_get, methods=["GET"]),
        Route("/cgi-bin/webhook/send", webhook_send, methods=["POST"]),
        Route("/cgi-bin/webhook/upload_media", webhook_upload_media, methods=["POST"]),
        Route("/cgi-bin/{path:path}", unknown_api, methods=["GET", "POST"]),
    ]
