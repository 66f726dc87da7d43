"""A captured WeCom callback replayed to a puppet (its direct callback target) while its token still
works: WeCom's signature is genuine, so it is answered ``success`` — but it is the same request, so the
puppet does not pull again. Before, every replay cost a ``sync_msg`` with a valid token, and a flood
kept the account pulling back to back, spending the corp's API budget (10,000 calls a minute per API)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from puppets import Bot, TextMessage
from puppets.pulling import Page, Puller
from tests.puppets.conftest import Corp, Hosted, corp, hosted, sim, sim_config, wait_until
from tests.support.servers import serve_app
from wecom.crypto import MsgCrypt
from wecom.models import KfMsgOrEvent, parse_event
from wecom.xml import parse_xml
from wxkf import webhooks

__all__ = ["corp", "hosted", "sim", "sim_config"]

REPLAYS = 5
UNREACHABLE_MANAGER = "http://127.0.0.1:9"  # nothing listens: the puppet has a manager, never reached


@dataclass
class Capture:
    """Stands in for the puppet as WeCom's callback target: keeps each callback's query and body."""

    requests: list[tuple[str, bytes]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def post(self, request: Request) -> Response:
        self.requests.append((request.url.query, await request.body()))
        self.arrived.set()
        return PlainTextResponse("success")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/callback", self.post, methods=["POST"])])


@pytest.fixture
async def capture() -> AsyncIterator[tuple[Capture, str]]:
    captured = Capture()
    async with serve_app(captured.app()) as url:
        yield captured, url


async def test_a_replayed_callback_whose_token_still_works_costs_no_pull(
    corp: Corp, hosted: Callable[..., Awaitable[Hosted]], capture: tuple[Capture, str]
) -> None:
    captured, capture_url = capture
    bot = Bot()
    texts: list[str] = []

    @bot.on_text
    async def note(message: TextMessage) -> None:
        texts.append(message.text)

    puppet = await hosted(bot, callback=False)
    await asyncio.wait_for(puppet.account.puller.caught_up.wait(), 10)  # the start-up pull
    await corp.set_callback(capture_url + "/callback")  # the attacker sees WeCom's callback
    await corp.says("m0")
    await asyncio.wait_for(captured.arrived.wait(), 10)
    query, body = captured.requests[0]
    puller = puppet.account.puller
    used = tokens_pulled_with(puller)
    await corp.set_callback(puppet.url + "/callback")
    async with httpx.AsyncClient(trust_env=False) as http:
        first = await http.post(f"{puppet.url}/callback?{query}", content=body)  # as WeCom delivered it
        assert first.status_code == 200
        await wait_until(handled(texts, "m0"), what="m0 handled")
        for n in range(REPLAYS):
            replayed = await http.post(f"{puppet.url}/callback?{query}", content=body)
            assert (replayed.status_code, replayed.text) == (200, "success")
            await corp.says(f"m{n + 1}")  # real traffic goes on meanwhile
            await wait_until(handled(texts, f"m{n + 1}"), what=f"m{n + 1} handled")
    assert texts == [f"m{n}" for n in range(REPLAYS + 1)]
    replayed_token = used[0]
    assert replayed_token is not None
    assert used.count(replayed_token) == 1, used  # before: once more per replay


async def test_a_replayed_signed_delivery_costs_no_pull_and_a_redelivery_signed_anew_does(
    corp: Corp, hosted: Callable[..., Awaitable[Hosted]], capture: tuple[Capture, str]
) -> None:
    """The manager's Standard Webhooks signature is genuine within its 5 minutes: a captured delivery
    replayed is answered ``roger`` without a pull; the manager's own redelivery of the same event
    (same ``webhook-id``, signed anew) is pulled."""
    captured, capture_url = capture
    puppet = await hosted(Bot(), callback=False, manager=UNREACHABLE_MANAGER)
    await asyncio.wait_for(puppet.account.puller.caught_up.wait(), 20)
    secret = webhooks.generate_secret()
    puppet.account.set_webhook_secret(secret)  # as a registration's answer does
    await corp.set_callback(capture_url + "/callback")
    await corp.says("m0")  # for a token WeCom issued: a made-up one is dropped after its first 95007
    await asyncio.wait_for(captured.arrived.wait(), 10)
    query, xml = captured.requests[0]
    params = dict(parse_qsl(query))
    crypt = MsgCrypt(corp.token, corp.aes_key, corp.corpid)
    event = parse_event(
        crypt.open(params["msg_signature"], params["timestamp"], params["nonce"], parse_xml(xml)["Encrypt"])
    )
    assert isinstance(event, KfMsgOrEvent)
    puller = puppet.account.puller
    used = tokens_pulled_with(puller)
    body = json.dumps({"token": event.token, "openKfId": corp.kf}).encode()
    now = int(time.time())
    delivery = {
        "content-type": "application/json",
        **webhooks.headers(secret, "event-1", body, timestamp=now),
    }
    url = puppet.url + "/callback/decrypted"
    async with httpx.AsyncClient(trust_env=False) as http:
        assert (await http.post(url, content=body, headers=delivery)).text == "roger"
        await wait_until(lambda: _pulled(used, 1), what="the delivery pulled")
        for _ in range(REPLAYS):
            await puller.caught_up.wait()  # each replay meets an idle puller: a pull would show
            replayed = await http.post(url, content=body, headers=delivery)
            assert (replayed.status_code, replayed.text) == (200, "roger")
        await puller.caught_up.wait()
        anew = {
            "content-type": "application/json",
            **webhooks.headers(secret, "event-1", body, timestamp=now + 1),
        }
        assert (await http.post(url, content=body, headers=anew)).text == "roger"
        await wait_until(lambda: _pulled(used, 2), what="the redelivery pulled")
    assert used.count(event.token) == 2, used  # before: once more per replay (7)


async def _pulled(used: list[str | None], count: int) -> bool:
    return len(used) >= count


def tokens_pulled_with(puller: Puller) -> list[str | None]:
    """From now on, the token of every ``sync_msg`` call ``puller`` makes (None: token-less), in order."""
    used: list[str | None] = []
    fetch = puller._fetch

    async def recording(cursor: str | None, token: str | None) -> Page:
        used.append(token)
        return await fetch(cursor, token)

    puller._fetch = recording
    return used


def handled(texts: list[str], text: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return text in texts

    return check
