"""The echo bot end to end: a customer writes in the simulator, ``wxkf puppet`` answers."""

from __future__ import annotations

from collections.abc import Callable

from tests.puppets.conftest import Corp, PuppetProcess


async def test_echo_bot_answers_ding_as_wecom_direct_callback_target(
    corp: Corp, make_puppet: Callable[..., PuppetProcess]
) -> None:
    puppet = make_puppet()
    await puppet.start()
    await corp.set_callback(puppet.url + "/callback")
    await corp.says("ding")
    assert await corp.wait_received(1) == ["echo: ding"]
