"""A captured WeCom callback replayed to a puppet that is WeCom's direct callback target.

Its signature stays valid forever, and its token, dead after 10 minutes, took the place of the newest
real one at every replay: each replay cost a sync_msg answered 95007 and a token-less pull, and a
replay flood kept the account pulling with the dead token (WeCom's API budget spent, real tokens
overwritten before use). A token WeCom called expired is now never used again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from puppets import Bot, TextMessage
from tests.attacks.test_puppet_replayed_live_token import tokens_pulled_with
from tests.puppets.conftest import Corp, Hosted, corp, hosted, sim, sim_config, wait_until
from tests.support.wecom_callbacks import CorpAppKeys, kf_event_xml, signed_post

__all__ = ["corp", "hosted", "sim", "sim_config"]

DEAD = "captured-token-long-expired"


async def test_a_replayed_callback_with_an_expired_token_is_pulled_with_at_most_once(
    corp: Corp, hosted: Callable[..., Awaitable[Hosted]]
) -> None:
    bot = Bot()
    texts: list[str] = []

    @bot.on_text
    async def note(message: TextMessage) -> None:
        texts.append(message.text)

    puppet = await hosted(bot)
    used = tokens_pulled_with(puppet.account.puller)
    query, xml = signed_post(
        CorpAppKeys(corp.corpid, corp.token, corp.aes_key), kf_event_xml(corp.corpid, corp.kf, DEAD)
    )
    async with httpx.AsyncClient(trust_env=False) as http:
        for n in range(5):
            replayed = await http.post(f"{puppet.url}/callback?{query}", content=xml)
            assert replayed.status_code == 200  # WeCom's signature is genuine: it cannot be told apart
            await corp.says(f"m{n}")
            await wait_until(handled(texts, f"m{n}"), what=f"m{n} handled")
    assert texts == [f"m{n}" for n in range(5)]  # nothing lost either way
    assert used.count(DEAD) <= 1, used  # before: once per replay


def handled(texts: list[str], text: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return text in texts

    return check
