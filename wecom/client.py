"""Async client for the WeCom APIs a kf puppet uses (``https://qyapi.weixin.qq.com/cgi-bin``).

Everything goes through :meth:`WeComClient.call`, which adds the access_token, turns a non-zero
errcode into its typed :class:`~wecom.errors.WeComError`, and on a token errcode (40001, 40014,
42001) reports the token to the provider and retries once with a fresh one: WeCom may revoke tokens
early, and that must cost one extra request, not a failed message.

Requests go through a :class:`~wecom.http.WeComHttp` (one aiohttp session per process, redirects
not followed). Secrets travel in query strings (``corpsecret``, ``access_token``, a robot's ``key``),
so a failure to get an answer is :class:`~wecom.errors.WeComTransportError` and an unusable answer
:class:`~wecom.errors.WeComResponseError`, both with the query removed.
"""

from __future__ import annotations

import hmac
import json as jsonlib
import logging
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wecom.errors import (
    TOKEN_ERRCODES,
    WeComResponseError,
    raise_for_payload,
)
from wecom.http import Answer, File, WeComHttp
from wecom.models import KfMessage
from wecom.tokens import AccessToken, AccessTokenProvider

__all__ = [
    "KfAccount",
    "KfCustomer",
    "MediaUploadResult",
    "SyncMsgResult",
    "WeComClient",
    "fetch_access_token",
    "robot_send",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://qyapi.weixin.qq.com/cgi-bin"

Payload = dict[str, Any]
M = TypeVar("M", bound=BaseModel)


# -- results ------------------------------------------------------------------------------
# extra="allow" everywhere: fields WeCom adds later stay reachable (model_extra / model_dump()).


class SyncMsgResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    next_cursor: str = ""
    has_more: bool = False
    msg_list: list[KfMessage] = Field(default_factory=list)


class KfAccount(BaseModel):
    model_config = ConfigDict(extra="allow")

    open_kfid: str
    name: str = ""
    avatar: str = ""
    manage_privilege: bool = False


class KfCustomer(BaseModel):
    model_config = ConfigDict(extra="allow")

    external_userid: str
    nickname: str = ""
    avatar: str = ""
    gender: int = 0
    unionid: str | None = None
    enter_session_context: dict[str, Any] | None = None


class MediaUploadResult(BaseModel):
    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)

    type: str
    media_id: str
    created_at: str  # WeCom sends a string of unix seconds


# -- transport ------------------------------------------------------------------------------


def _url(base_url: str, path: str) -> str:
    return f"{base_url.rstrip('/')}/{path.lstrip('/')}"


def _decode(response: Answer) -> Payload | None:
    """The JSON object in ``response``, or None if it is not one."""
    try:
        payload = jsonlib.loads(response.content)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _payload(response: Answer, api: str) -> Payload:
    """The JSON object WeCom answered, or :class:`WeComResponseError`.

    WeCom answers errors with HTTP 200; a JSON errcode on another status (a proxy speaking WeCom's
    shape) is still honoured by the caller, anything else is an unusable response.
    """
    payload = _decode(response)
    if payload is not None and (response.is_success or "errcode" in payload):
        return payload
    what = f"HTTP {response.status}" if not response.is_success else "a response that is not a JSON object"
    raise WeComResponseError(
        f"{api}: got {what}", request=response.safe_request(), status_code=response.status
    )


def _error_json(response: Answer) -> Payload | None:
    """For binary endpoints: the ``{"errcode"...}`` WeCom sends instead of the file, if it did.

    Judged by content type *and* shape, so a downloaded text or JSON file is still just a file.
    """
    content_type = response.content_type.split(";")[0].strip().lower()
    if content_type not in ("application/json", "text/json", "text/plain"):
        return None
    payload = _decode(response)
    return payload if payload is not None and "errcode" in payload else None


def _model(model: type[M], data: Any, api: str, response: Answer | None = None) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise WeComResponseError(
            f"{api}: unexpected response shape ({exc.error_count()} error(s))",
            request=response.safe_request() if response is not None else None,
        ) from None


def _field(payload: Payload, name: str, api: str) -> Any:
    try:
        return payload[name]
    except KeyError:
        raise WeComResponseError(f"{api}: response has no {name!r}") from None


# -- module-level calls (no access_token involved) ------------------------------------------


async def fetch_access_token(
    http: WeComHttp, base_url: str, corp_id: str, secret: str, *, api: str = "gettoken"
) -> AccessToken:
    """``GET gettoken``. Raises the typed :class:`~wecom.errors.WeComError` (40001: wrong secret).

    ``api`` names another path answering in gettoken's shape (the Node manager's ``getToken``).
    """
    query = {"corpid": corp_id, "corpsecret": secret}
    response = await http.request("GET", _url(base_url, api), params=query)
    payload = _payload(response, api)
    raise_for_payload(payload, api)
    token = _field(payload, "access_token", api)
    expires_in = payload.get("expires_in", 7200)
    if not isinstance(token, str) or not token or not isinstance(expires_in, int):
        raise WeComResponseError(f"{api}: malformed token response", request=response.safe_request())
    return AccessToken.expiring_in(token, expires_in)


async def robot_send(http: WeComHttp, base_url: str, key: str, message: Mapping[str, Any]) -> None:
    """Post ``message`` (``{"msgtype": "text", "text": {...}}``...) through a group robot webhook."""
    api = "webhook/send"
    response = await http.request("POST", _url(base_url, api), params={"key": key}, json=message)
    raise_for_payload(_payload(response, api), api)


# -- the client -----------------------------------------------------------------------------


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _token_errcode(payload: Payload | None) -> int | None:
    """The errcode if it says the access_token was rejected."""
    errcode = payload.get("errcode") if payload is not None else None
    return errcode if isinstance(errcode, int) and errcode in TOKEN_ERRCODES else None


class WeComClient:
    """One app's API client. ``tokens=None`` sends no access_token (a proxy adds it)."""

    def __init__(
        self,
        http: WeComHttp,
        base_url: str = DEFAULT_BASE_URL,
        tokens: AccessTokenProvider | None = None,
    ) -> None:
        self.http = http
        self.base_url = base_url
        self.tokens = tokens

    def __repr__(self) -> str:
        return f"WeComClient(base_url={self.base_url!r})"

    # -- plumbing ---------------------------------------------------------------------------
    async def _exchange(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        files: Mapping[str, File] | None = None,
        binary: bool = False,
    ) -> tuple[Answer, Payload | None]:
        """Send with the access_token; retry once on a token errcode; raise any other errcode.

        Returns the response and its JSON payload; for ``binary`` endpoints the payload is None
        unless the answer was JSON (an error, raised before returning).
        """
        api = path.partition("?")[0]  # the name errors and logs use: never a query string
        token = await self.tokens.get() if self.tokens is not None else None
        response, payload = await self._attempt(method, path, token, json, params, files, binary)
        rejected = _token_errcode(payload)
        if self.tokens is not None and token is not None and rejected is not None:
            await self.tokens.invalidate(token)
            fresh = await self.tokens.get()
            if not _same(fresh, token):
                log.info("access token rejected by %s (errcode %s); retrying once", api, rejected)
                response, payload = await self._attempt(method, path, fresh, json, params, files, binary)
        if payload is not None:
            raise_for_payload(payload, api)
        return response, payload

    async def _attempt(
        self,
        method: str,
        path: str,
        token: str | None,
        json: Any,
        params: Mapping[str, Any] | None,
        files: Mapping[str, File] | None,
        binary: bool,
    ) -> tuple[Answer, Payload | None]:
        query = dict(params or {})
        if token is not None:
            query["access_token"] = token
        response = await self.http.request(
            method, _url(self.base_url, path), params=query, json=json, files=files
        )
        if binary and response.is_success:
            return response, _error_json(response)
        return response, _payload(response, path.partition("?")[0])

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        files: Mapping[str, File] | None = None,
    ) -> Payload:
        """Any JSON API under the base URL, e.g. ``call("POST", "kf/send_msg", json={...})``."""
        _, payload = await self._exchange(method, path, json=json, params=params, files=files)
        assert payload is not None
        return payload

    async def _post(self, path: str, body: Mapping[str, Any]) -> Payload:
        return await self.call("POST", path, json={k: v for k, v in body.items() if v is not None})

    # -- kf messages ------------------------------------------------------------------------
    async def kf_sync_msg(
        self,
        open_kfid: str,
        token: str | None = None,
        cursor: str | None = None,
        limit: int = 1000,
        voice_format: int | None = None,
    ) -> SyncMsgResult:
        """Pull messages after ``cursor``. ``token`` is the callback's Token (avoids strict limits).

        ``has_more`` may be true with an empty ``msg_list``: keep pulling with ``next_cursor``.
        """
        api = "kf/sync_msg"
        payload = await self._post(
            api,
            {
                "cursor": cursor,
                "token": token,
                "limit": limit,
                "voice_format": voice_format,
                "open_kfid": open_kfid,
            },
        )
        return _model(SyncMsgResult, payload, api)

    async def kf_send_msg(
        self, touser: str, open_kfid: str, msgtype: str, body: Mapping[str, Any], msgid: str | None = None
    ) -> str:
        """Send ``{msgtype: body}`` to a customer; returns the msgid."""
        api = "kf/send_msg"
        payload = await self._post(
            api, {"touser": touser, "open_kfid": open_kfid, "msgid": msgid, "msgtype": msgtype, msgtype: body}
        )
        return str(_field(payload, "msgid", api))

    async def kf_send_msg_on_event(
        self, code: str, msgtype: str, body: Mapping[str, Any], msgid: str | None = None
    ) -> str:
        """Answer an event (welcome_code...); ``code`` is single use."""
        api = "kf/send_msg_on_event"
        payload = await self._post(api, {"code": code, "msgid": msgid, "msgtype": msgtype, msgtype: body})
        return str(_field(payload, "msgid", api))

    # -- kf accounts ------------------------------------------------------------------------
    async def kf_account_list(self, offset: int = 0, limit: int = 100) -> list[KfAccount]:
        api = "kf/account/list"
        payload = await self._post(api, {"offset": offset, "limit": limit})
        return [_model(KfAccount, item, api) for item in payload.get("account_list") or []]

    async def kf_accounts_all(self, page_size: int = 100) -> list[KfAccount]:
        """Every account, paging through ``kf/account/list`` until a short page."""
        accounts: list[KfAccount] = []
        while True:
            page = await self.kf_account_list(offset=len(accounts), limit=page_size)
            accounts.extend(page)
            if len(page) < page_size:
                return accounts

    async def kf_account_add(self, name: str, media_id: str) -> str:
        """Create an account (``media_id``: its avatar); returns the open_kfid."""
        api = "kf/account/add"
        payload = await self._post(api, {"name": name, "media_id": media_id})
        return str(_field(payload, "open_kfid", api))

    async def kf_account_del(self, open_kfid: str) -> None:
        await self._post("kf/account/del", {"open_kfid": open_kfid})

    async def kf_account_update(
        self, open_kfid: str, name: str | None = None, media_id: str | None = None
    ) -> None:
        await self._post("kf/account/update", {"open_kfid": open_kfid, "name": name, "media_id": media_id})

    async def kf_add_contact_way(self, open_kfid: str, scene: str | None = None) -> str:
        """The URL customers open to start a session; ``scene`` comes back in enter_session."""
        api = "kf/add_contact_way"
        payload = await self._post(api, {"open_kfid": open_kfid, "scene": scene})
        return str(_field(payload, "url", api))

    # -- sessions and customers -------------------------------------------------------------
    async def kf_service_state_get(self, open_kfid: str, external_userid: str) -> tuple[int, str | None]:
        """``(service_state 0..4, servicer_userid or None)``."""
        api = "kf/service_state/get"
        payload = await self._post(api, {"open_kfid": open_kfid, "external_userid": external_userid})
        state = _field(payload, "service_state", api)
        if not isinstance(state, int):
            raise WeComResponseError(f"{api}: service_state is not an integer")
        return state, payload.get("servicer_userid") or None

    async def kf_service_state_trans(
        self, open_kfid: str, external_userid: str, service_state: int, servicer_userid: str | None = None
    ) -> str | None:
        """Change the session state; returns the msg_code for a closing message, if WeCom gives one."""
        payload = await self._post(
            "kf/service_state/trans",
            {
                "open_kfid": open_kfid,
                "external_userid": external_userid,
                "service_state": service_state,
                "servicer_userid": servicer_userid,
            },
        )
        return payload.get("msg_code") or None

    async def kf_customer_batchget(
        self, external_userid_list: list[str], need_enter_session_context: bool = False
    ) -> tuple[list[KfCustomer], list[str]]:
        """``(customers, invalid_external_userid)`` for up to 100 ids."""
        api = "kf/customer/batchget"
        payload = await self._post(
            api,
            {
                "external_userid_list": external_userid_list,
                "need_enter_session_context": int(need_enter_session_context),
            },
        )
        customers = [_model(KfCustomer, item, api) for item in payload.get("customer_list") or []]
        return customers, [str(uid) for uid in payload.get("invalid_external_userid") or []]

    # -- media ------------------------------------------------------------------------------
    async def media_upload(self, type: str, filename: str, content: bytes) -> MediaUploadResult:
        """Upload temporary media (valid 3 days). ``type``: image, voice, video or file."""
        api = "media/upload"
        _, payload = await self._exchange(
            "POST",
            api,
            params={"type": type},
            files={"media": (filename, content, "application/octet-stream")},
        )
        return _model(MediaUploadResult, payload, api)

    async def media_get(self, media_id: str) -> bytes:
        """Download temporary media. WeCom reports errors as JSON instead of the file."""
        response, _ = await self._exchange("GET", "media/get", params={"media_id": media_id}, binary=True)
        return response.content
