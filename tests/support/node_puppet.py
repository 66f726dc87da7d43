"""A test double of the Node ``wechaty-puppet-wxkf``: exactly the compat contract, nothing more.

It registers with the Node request body, serves ``GET/POST /callback`` (raw encrypted XML with the
original query) and ``POST /callback/decrypted`` (``{token, openKfId}``), answers ``success`` and
``roger`` like the original, ignores the extra signature headers our manager adds, and pulls with
``kf/sync_msg`` using the callback's Token. Unlike the original it keeps its cursor until the messages
are handled and never runs two pulls at once, so tests can assert "every message, in order, once".

Its calls to the manager behave like the original's axios calls: a non-2xx answer raises
(:class:`httpx.HTTPStatusError`), which in the original is an uncaught exception. :meth:`sigint` is
the original's SIGINT handler (deregister with ``{kfId, kfName, corpId}`` and no secret, then exit).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from wecom.client import WeComClient
from wecom.crypto import CryptoError, MsgCrypt
from wecom.http import WeComHttp
from wecom.models import KfMsgOrEvent, parse_event
from wecom.tokens import GetTokenProvider
from wecom.xml import parse_xml


@dataclass
class NodePuppet:
    corp_id: str
    corp_secret: str
    token: str
    aes_key: str
    kf_id: str
    api_base: str
    http: httpx.AsyncClient
    kf_name: str = ""
    wecom: WeComHttp = field(default_factory=WeComHttp)  # its WeCom calls (sync_msg), as ours
    cursor: str = ""
    handled: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    callbacks: list[str] = field(default_factory=list)  # "raw" or "decrypted", per callback received
    exit_messages: list[str] = field(default_factory=list)  # what sigint() logged before exiting
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def __post_init__(self) -> None:
        self.crypt = MsgCrypt(self.token, self.aes_key, self.corp_id)
        from wecom.client import fetch_access_token

        async def fetch() -> Any:
            return await fetch_access_token(self.wecom, self.api_base, self.corp_id, self.corp_secret)

        self.client = WeComClient(self.wecom, self.api_base, GetTokenProvider(fetch))
        self._pulling = asyncio.Lock()

    def register_body(self, endpoint: str) -> dict[str, str]:
        return {
            "kfId": self.kf_id,
            "kfName": self.kf_name,
            "endpoint": endpoint,
            "corpId": self.corp_id,
            "corpSecret": self.corp_secret,
            "token": self.token,
            "encodingAESKey": self.aes_key,
        }

    async def register(self, manager_url: str, endpoint: str) -> httpx.Response:
        """Register like the original: a non-2xx answer raises, as axios throws."""
        response = await self.http.post(
            f"{manager_url}/puppetWxkfManager/register", json=self.register_body(endpoint)
        )
        return response.raise_for_status()

    async def deregister(self, manager_url: str) -> httpx.Response:
        """The original's deregister: ``{kfId, kfName, corpId}``, no secret; non-2xx raises."""
        body = {"kfId": self.kf_id, "kfName": self.kf_name, "corpId": self.corp_id}
        response = await self.http.post(f"{manager_url}/puppetWxkfManager/deregister", json=body)
        return response.raise_for_status()

    async def sigint(self, manager_url: str) -> int:
        """Ctrl-C in the original: deregister, log the answer's message, exit 0; an exception the
        handler does not catch (axios on a non-2xx answer) ends the process with status 1."""
        try:
            answer = (await self.deregister(manager_url)).json()
        except httpx.HTTPStatusError:
            return 1
        self.exit_messages.append(str(answer.get("message")))
        return 0

    async def pull(self, token: str) -> None:
        async with self._pulling:
            while True:
                result = await self.client.kf_sync_msg(self.kf_id, token=token, cursor=self.cursor or None)
                for message in result.msg_list:
                    self.handled.append(message.msgid)
                    if message.msgtype == "text":
                        self.texts.append(message.body.get("content", ""))
                self.cursor = result.next_cursor or self.cursor  # committed after handling
                if not result.has_more:
                    break
        async with self.changed:
            self.changed.notify_all()

    async def wait_for_texts(self, count: int, timeout: float = 30.0) -> list[str]:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: len(self.texts) >= count)
        return self.texts

    # -- the puppet's HTTP server -----------------------------------------------------------
    async def verify(self, request: Request) -> Response:
        q = request.query_params
        try:
            plain = self.crypt.verify_url(q["msg_signature"], q["timestamp"], q["nonce"], q["echostr"])
        except (KeyError, CryptoError):
            return PlainTextResponse("bad request", status_code=400)
        return Response(plain)

    async def raw_callback(self, request: Request) -> Response:
        q = request.query_params
        body = await request.body()
        try:
            envelope = parse_xml(body)
            plaintext = self.crypt.open(q["msg_signature"], q["timestamp"], q["nonce"], envelope["Encrypt"])
            event = parse_event(plaintext)
        except (KeyError, ValueError):
            return PlainTextResponse("bad request", status_code=400)
        if not isinstance(event, KfMsgOrEvent) or event.open_kf_id != self.kf_id:
            return PlainTextResponse("success")
        if event.to_user_name != self.corp_id:
            return PlainTextResponse("success")
        self.callbacks.append("raw")
        await self.pull(event.token)
        return PlainTextResponse("success")

    async def decrypted_callback(self, request: Request) -> Response:
        data = await request.json()
        if data.get("openKfId") != self.kf_id:
            return PlainTextResponse("roger")
        self.callbacks.append("decrypted")
        await self.pull(data["token"])
        return PlainTextResponse("roger")

    def app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            yield
            await self.wecom.aclose()

        return Starlette(
            lifespan=lifespan,
            routes=[
                Route("/callback", self.verify, methods=["GET"]),
                Route("/callback", self.raw_callback, methods=["POST"]),
                Route("/callback/decrypted", self.decrypted_callback, methods=["POST"]),
            ],
        )
