"""The pull loop against the simulator: one pull per cursor, newest token, token-less only when needed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from puppets import Bot, TextMessage
from puppets.pulling import Page
from simulator.state import SimState
from tests.puppets.conftest import Corp, Hosted, wait_until

Host = Callable[..., Awaitable[Hosted]]


def recording_bot() -> tuple[Bot, list[str]]:
    bot = Bot()
    texts: list[str] = []

    @bot.on_text
    async def note(message: TextMessage) -> None:
        texts.append(message.text)

    return bot, texts


async def count(items: list[str], n: int) -> bool:
    return len(items) >= n


async def test_a_sync_longer_than_the_next_callbacks_never_runs_twice_on_one_cursor(
    corp: Corp, hosted: Host
) -> None:
    bot, texts = recording_bot()
    puppet = await hosted(bot)
    puller = puppet.account.puller
    await asyncio.wait_for(puller.caught_up.wait(), 10)
    original = puller._fetch
    gate = asyncio.Event()
    cursors: list[str | None] = []
    running = 0
    most = 0

    async def slow_fetch(cursor: str | None, token: str | None) -> Page:
        nonlocal running, most
        cursors.append(cursor)
        running += 1
        most = max(most, running)
        try:
            await gate.wait()  # the sync takes "long": every later callback arrives meanwhile
            return await original(cursor, token)
        finally:
            running -= 1

    puller._fetch = slow_fetch
    await corp.says("1", wait=True)
    await wait_until(lambda: count(cursors, 1), what="the first pull to start")  # type: ignore[arg-type]
    await corp.says("2", wait=True)
    await corp.says("3", wait=True)  # each callback delivered (answered) while the first pull waits
    gate.set()
    await wait_until(lambda: count(texts, 3), what="three messages")
    await asyncio.wait_for(puller.caught_up.wait(), 10)
    assert texts == ["1", "2", "3"]
    assert most == 1
    assert len(cursors) == len(set(cursors)) == 2  # the slow pull, then one more for the newer tokens


async def test_an_expired_callback_token_falls_back_to_a_tokenless_pull(
    corp: Corp, hosted: Host, sim: tuple[str, SimState]
) -> None:
    bot, texts = recording_bot()
    puppet = await hosted(bot, callback=False)
    puller = puppet.account.puller
    await asyncio.wait_for(puller.caught_up.wait(), 10)
    state = sim[1]
    wecom_corp = state.wecom.directory.corp(corp.corpid)
    token = state.wecom.kf.issue_msg_token(wecom_corp, wecom_corp.accounts[corp.kf])
    state.clock.advance(601)  # type: ignore[attr-defined]  # the token's 10 minutes are over
    await corp.says("late")
    before = puller.tokenless_pulls
    puller.callback(token)
    await wait_until(lambda: count(texts, 1), what="the message")
    assert texts == ["late"]
    assert puller.tokenless_pulls == before + 1
