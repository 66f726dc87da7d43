"""Client logic that needs no WeCom: token retry, error typing, secrets kept out of errors, response shapes.

End-to-end behaviour against the simulator is tested elsewhere; these serve each test's handler (a
function from ``httpx.Request`` to ``httpx.Response``, for brevity) from a real local HTTP server, so the
client's aiohttp transport runs as it does in production.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer

from wecom.client import WeComClient, fetch_access_token, robot_send
from wecom.errors import (
    InvalidAccessToken,
    InvalidCredential,
    RobotRemoved,
    SendCountLimit,
    WeComError,
    WeComResponseError,
    WeComTransportError,
)
from wecom.http import WeComHttp
from wecom.tokens import AccessToken, GetTokenProvider, StaticTokenProvider

SECRET = "corp-secret-0123456789abcdef"
ROBOT_KEY = "robot-key-0123456789abcdef"

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """Serves requests with a handler and keeps them for assertions. A handler that raises makes the
    server drop the connection without an answer. ``base`` is the server's ``/cgi-bin``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []
        self.base = ""

    async def __call__(self, incoming: web.BaseRequest) -> web.StreamResponse:
        request = httpx.Request(
            incoming.method, str(incoming.url), headers=dict(incoming.headers), content=await incoming.read()
        )
        self.requests.append(request)
        try:
            response = self.handler(request)
        except httpx.HTTPError:
            assert incoming.transport is not None
            incoming.transport.abort()  # no answer at all
            raise web.HTTPInternalServerError() from None
        return web.Response(
            status=response.status_code,
            body=response.content,
            headers={
                name: value
                for name, value in response.headers.items()
                if name not in ("content-length", "content-encoding", "transfer-encoding")
            },
        )

    def tokens_used(self) -> list[str | None]:
        return [request.url.params.get("access_token") for request in self.requests]


@pytest.fixture
async def make_http() -> AsyncIterator[Callable[[Handler], Awaitable[tuple[WeComHttp, Recorder]]]]:
    servers: list[RawTestServer] = []
    clients: list[WeComHttp] = []

    async def make(handler: Handler) -> tuple[WeComHttp, Recorder]:
        recorder = Recorder(handler)
        server = RawTestServer(recorder, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        recorder.base = str(server.make_url("/cgi-bin"))
        clients.append(WeComHttp(timeout=10.0))
        return clients[-1], recorder

    yield make
    for client in clients:
        await client.aclose()
    for server in servers:
        await server.close()


def ok(**fields: Any) -> httpx.Response:
    return httpx.Response(200, json={"errcode": 0, "errmsg": "ok", **fields})


def error(errcode: int, errmsg: str = "error") -> httpx.Response:
    return httpx.Response(200, json={"errcode": errcode, "errmsg": errmsg})


def numbered_tokens() -> GetTokenProvider:
    count = 0

    async def fetch() -> AccessToken:
        nonlocal count
        count += 1
        return AccessToken.expiring_in(f"tok-{count}", 7200)

    return GetTokenProvider(fetch)


# -- the access token ---------------------------------------------------------------------------


@pytest.mark.parametrize("errcode", [40001, 40014, 42001])
async def test_token_error_invalidates_and_retries_once(errcode: int, make_http: Any) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params["access_token"] == "tok-1":
            return error(errcode, "access_token invalid")
        return ok(msgid="m1")

    http, recorder = await make_http(handler)
    tokens = numbered_tokens()
    client = WeComClient(http, recorder.base, tokens)
    assert await client.kf_send_msg("wm1", "wk1", "text", {"content": "hi"}) == "m1"
    assert recorder.tokens_used() == ["tok-1", "tok-2"]
    assert tokens.fetches == 2
    assert json.loads(recorder.requests[0].content) == json.loads(recorder.requests[1].content)


async def test_retries_at_most_once(make_http: Any) -> None:
    http, recorder = await make_http(lambda request: error(40014))
    client = WeComClient(http, recorder.base, numbered_tokens())
    with pytest.raises(InvalidAccessToken) as exc:
        await client.kf_account_list()
    assert exc.value.api == "kf/account/list"
    assert recorder.tokens_used() == ["tok-1", "tok-2"]


async def test_no_retry_when_the_provider_has_nothing_fresher(make_http: Any) -> None:
    http, recorder = await make_http(lambda request: error(42001))
    client = WeComClient(http, recorder.base, StaticTokenProvider("fixed"))
    with pytest.raises(WeComError):
        await client.kf_account_list()
    assert recorder.tokens_used() == ["fixed"]


async def test_other_errors_are_not_retried(make_http: Any) -> None:
    http, recorder = await make_http(lambda request: error(95001, "api send count limit"))
    client = WeComClient(http, recorder.base, numbered_tokens())
    with pytest.raises(SendCountLimit) as exc:
        await client.kf_send_msg("wm1", "wk1", "text", {"content": "hi"})
    assert str(exc.value) == "errcode 95001 (api send count limit) from kf/send_msg"
    assert len(recorder.requests) == 1


async def test_without_a_provider_no_token_is_sent(make_http: Any) -> None:
    http, recorder = await make_http(lambda request: ok(url="https://work.weixin.qq.com/kf/x"))
    client = WeComClient(http, recorder.base, None)
    assert await client.kf_add_contact_way("wk1") == "https://work.weixin.qq.com/kf/x"
    assert recorder.tokens_used() == [None]


# -- secrets stay out of errors -------------------------------------------------------------------


def leaks(exc: BaseException, *secrets: str) -> bool:
    """Would logging ``exc`` (traceback, chained exceptions, repr, request URL) show a secret?"""
    assert exc.__cause__ is None and exc.__context__ is None  # nothing chained that could hold the URL
    text = "".join(traceback.format_exception(exc)) + repr(exc)
    if isinstance(exc, httpx.HTTPError):
        text += str(exc.request.url)
    return any(secret in text for secret in secrets)


def refuse_connection(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError(f"cannot reach {request.url}", request=request)


async def test_gettoken_transport_error_hides_the_secret(make_http: Any) -> None:
    http, recorder = await make_http(refuse_connection)
    with pytest.raises(WeComTransportError) as exc:
        await fetch_access_token(http, recorder.base, "ww-corp", SECRET)
    assert isinstance(exc.value, httpx.HTTPError)  # callers catching httpx errors still catch it
    assert "ServerDisconnectedError" in str(exc.value) and f"{recorder.base}/gettoken" in str(exc.value)
    assert not leaks(exc.value, SECRET)


async def test_secrets_are_scrubbed_from_the_transports_own_text() -> None:
    """aiohttp names the whole URL, query included, when it refuses one (a base URL with no host)."""
    async with WeComHttp() as http:
        with pytest.raises(WeComTransportError) as exc:
            await fetch_access_token(http, "http:///cgi-bin", "ww-corp", SECRET)
    assert "InvalidUrl" in str(exc.value) and "/cgi-bin/gettoken" in str(exc.value)
    assert not leaks(exc.value, SECRET)


async def test_redirects_are_not_followed(make_http: Any) -> None:
    http, recorder = await make_http(
        lambda request: httpx.Response(307, headers={"location": str(request.url.copy_with(path="/x"))})
    )
    with pytest.raises(WeComResponseError) as exc:
        await WeComClient(http, recorder.base, StaticTokenProvider("t")).kf_account_list()
    assert exc.value.status_code == 307
    assert len(recorder.requests) == 1


async def test_api_transport_error_hides_the_access_token(make_http: Any) -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout(f"timed out on {request.url.query.decode()}", request=request)

    http, recorder = await make_http(timeout)
    client = WeComClient(http, recorder.base, StaticTokenProvider("ACCESS-TOKEN-SECRET"))
    with pytest.raises(WeComTransportError) as exc:
        await client.kf_sync_msg("wk1", token="SYNC-TOKEN")
    assert not leaks(exc.value, "ACCESS-TOKEN-SECRET")


async def test_robot_transport_error_hides_the_key(make_http: Any) -> None:
    http, recorder = await make_http(refuse_connection)
    with pytest.raises(WeComTransportError) as exc:
        await robot_send(http, recorder.base, ROBOT_KEY, {"msgtype": "text", "text": {"content": "x"}})
    assert not leaks(exc.value, ROBOT_KEY)


async def test_unusable_response_hides_the_secret(make_http: Any) -> None:
    http, recorder = await make_http(
        lambda request: httpx.Response(502, text=f"bad gateway for {request.url}")
    )
    with pytest.raises(WeComResponseError) as exc:
        await fetch_access_token(http, recorder.base, "ww-corp", SECRET)
    assert exc.value.status_code == 502
    assert not leaks(exc.value, SECRET)


async def test_wrong_secret_is_a_typed_error_without_the_secret(make_http: Any) -> None:
    http, recorder = await make_http(lambda request: error(40001, "invalid credential"))
    with pytest.raises(InvalidCredential) as exc:
        await fetch_access_token(http, recorder.base, "ww-corp", SECRET)
    assert not leaks(exc.value, SECRET)


# -- response shapes ------------------------------------------------------------------------------


async def test_fetch_access_token(make_http: Any) -> None:
    http, recorder = await make_http(lambda request: ok(access_token="AT", expires_in=7200))
    token = await fetch_access_token(http, recorder.base, "ww-corp", SECRET)
    assert token.token == "AT" and 7100 < token.valid_for() <= 7200
    assert dict(recorder.requests[0].url.params) == {"corpid": "ww-corp", "corpsecret": SECRET}


@pytest.mark.parametrize("body", ["<html>oops</html>", "[1, 2]", '{"errcode": 0}'])
async def test_malformed_responses(body: str, make_http: Any) -> None:
    http, recorder = await make_http(lambda request: httpx.Response(200, text=body))
    with pytest.raises(WeComResponseError):
        await fetch_access_token(http, recorder.base, "ww-corp", SECRET)


async def test_sync_msg_request_and_result(make_http: Any) -> None:
    item = {
        "msgid": "m",
        "open_kfid": "wk1",
        "send_time": 1,
        "origin": 3,
        "msgtype": "text",
        "text": {"content": "hi"},
    }
    http, recorder = await make_http(lambda request: ok(next_cursor="c2", has_more=1, msg_list=[item]))
    result = await WeComClient(http, recorder.base, StaticTokenProvider("t")).kf_sync_msg(
        "wk1", token="ev", cursor="c1"
    )
    assert json.loads(recorder.requests[0].content) == {
        "cursor": "c1",
        "token": "ev",
        "limit": 1000,
        "open_kfid": "wk1",
    }
    assert (result.next_cursor, result.has_more) == ("c2", True)
    assert result.msg_list[0].body == {"content": "hi"}


async def test_accounts_all_pages_until_a_short_page(make_http: Any) -> None:
    accounts = [
        {"open_kfid": f"wk{n}", "name": f"n{n}", "avatar": "", "manage_privilege": True} for n in range(130)
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        return ok(account_list=accounts[body["offset"] : body["offset"] + body["limit"]])

    http, recorder = await make_http(handler)
    found = await WeComClient(http, recorder.base, StaticTokenProvider("t")).kf_accounts_all()
    assert [account.open_kfid for account in found] == [f"wk{n}" for n in range(130)]
    assert len(recorder.requests) == 2


async def test_media_upload_is_multipart(make_http: Any) -> None:
    http, recorder = await make_http(lambda request: ok(type="image", media_id="MID", created_at=1380000000))
    result = await WeComClient(http, recorder.base, StaticTokenProvider("t")).media_upload(
        "image", "a.png", b"\x89PNG.."
    )
    assert (result.media_id, result.created_at) == ("MID", "1380000000")
    request = recorder.requests[0]
    assert request.url.params["type"] == "image"
    assert b'name="media"; filename="a.png"' in request.content


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("image/jpeg", b"\xff\xd8jpeg"),
        ("text/plain", b"a plain text file"),
        ("application/json", b'{"a": 1}'),
    ],
)
async def test_media_get_returns_the_file(content_type: str, body: bytes, make_http: Any) -> None:
    http, recorder = await make_http(
        lambda request: httpx.Response(200, content=body, headers={"content-type": content_type})
    )
    assert await WeComClient(http, recorder.base, StaticTokenProvider("t")).media_get("MID") == body


async def test_media_get_error_and_token_retry(make_http: Any) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params["access_token"] == "tok-1":
            return error(40014)
        return error(40007, "invalid media_id")

    http, recorder = await make_http(handler)
    with pytest.raises(WeComError) as exc:
        await WeComClient(http, recorder.base, numbered_tokens()).media_get("MID")
    assert (exc.value.errcode, exc.value.api) == (40007, "media/get")
    assert recorder.tokens_used() == ["tok-1", "tok-2"]


async def test_robot_send(make_http: Any) -> None:
    http, recorder = await make_http(lambda request: error(93000, "invalid webhook url"))
    with pytest.raises(RobotRemoved):
        await robot_send(http, recorder.base, "k", {"msgtype": "text", "text": {"content": "x"}})
    assert recorder.requests[0].url.params["key"] == "k"
    assert "access_token" not in recorder.requests[0].url.params
