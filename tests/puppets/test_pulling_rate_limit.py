"""Token-less pulls under WeCom's strict limit: back off on 45009, and let a callback token cut it short."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from simulator import SimConfig
from simulator.config import Rate
from tests.puppets.conftest import SIM_CONFIG, Corp, Hosted, wait_until
from tests.puppets.test_pulling import count, recording_bot

Host = Callable[..., Awaitable[Hosted]]


@pytest.fixture
def sim_config() -> SimConfig:
    return SIM_CONFIG.model_copy(update={"sync_tokenless_rate": Rate(calls=1, seconds=3600)})


async def test_a_rate_limited_tokenless_pull_backs_off_and_the_next_callback_token_pulls_at_once(
    corp: Corp, hosted: Host
) -> None:
    bot, texts = recording_bot()
    puppet = await hosted(bot)
    puller = puppet.account.puller
    await asyncio.wait_for(puller.caught_up.wait(), 10)  # the start-up pull used the hour's one call
    puller.catch_up()  # e.g. after re-registering: refused with 45009, backing off for ~10 s
    await wait_until(lambda: _at_least(puller.tokenless_pulls, 2), what="the refused pull")
    await corp.says("during backoff", wait=True)
    await wait_until(lambda: count(texts, 1), timeout=5, what="the message, well before the backoff ends")
    assert puller.tokenless_pulls == 2  # no retry storm of token-less calls


async def _at_least(value: int, n: int) -> bool:
    return value >= n
