"""A captured WeCom callback replayed to a puppet (its direct callback target) while its token still
works: WeCom's signature is genuine, so it is answered ``success`` — but it is the same request, so the
puppet does not pull again. Before, every replay cost a ``sync_msg`` with a valid token, and a flood
kept the account pulling back to back, spending the corp's API budget (10,000 calls a minute per API)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from puppets import Bot, TextMessage
from puppets.pulling import Page
from tests.puppets.conftest import Corp, Hosted, corp, hosted, sim, sim_config, wait_until
from tests.support.servers import serve_app

__all__ = ["corp", "hosted", "sim", "sim_config"]

REPLAYS = 5


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
    used: list[str | None] = []
    fetch = puller._fetch

    async def recording(cursor: str | None, token: str | None) -> Page:
        used.append(token)
        return await fetch(cursor, token)

    puller._fetch = recording
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


def handled(texts: list[str], text: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return text in texts

    return check
