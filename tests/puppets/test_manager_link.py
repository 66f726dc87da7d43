# ruff: noqa: F811 - fixtures are imported by name and then requested by name
"""The registration loop against a real ``wxkf up`` that comes and goes: backoff while it cannot be
reached, a pull after each registration, and a lost heartbeat followed by a new registration.

The loop's waits go through a recording ``sleep`` that returns at once and plays the outage's script,
so the test takes as long as two hub start-ups, and the delays are checked as values, not timed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx

from puppets.bot import Bot
from puppets.manager_link import BACKOFF, ManagerLink
from simulator.state import SimState
from tests.puppets.conftest import Corp, Hosted, wait_until
from tests.puppets.test_lifecycle import sim_config, tokenless_pulls, unstarted_hub  # noqa: F401
from tests.support.services import ServiceProcess


def within(delay: float, base: float) -> bool:
    return 0.8 * base <= delay <= 1.2 * base


async def test_registration_backs_off_while_the_manager_is_away_and_every_registration_catches_up(
    corp: Corp,
    sim: tuple[str, SimState],
    unstarted_hub: ServiceProcess,
    hosted: Callable[..., Awaitable[Hosted]],
) -> None:
    hub = unstarted_hub
    served = await hosted(Bot(), callback=False)
    account = served.account
    await wait_until(lambda: _async(tokenless_pulls(sim, corp) == 1), what="the start-up pull")
    delays: list[float] = []
    finished = asyncio.Event()

    async def script(delay: float) -> None:
        """The link's sleep: record, then play the outage at the given steps."""
        delays.append(delay)
        step = len(delays)
        if step == 4:  # the hub is back: the link registers after this wait
            await hub.start()
        elif step == 5:  # registered (and asked for a pull); now the hub dies under its heartbeat
            hub.kill()
        elif step == 7:  # the heartbeat failed, one registration attempt failed: the hub comes back
            await hub.start()
        elif step == 8:
            finished.set()
            await asyncio.Event().wait()  # until cancelled

    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        link = ManagerLink(http, hub.url, served.url, account, interval=15.0, sleep=script)
        running = asyncio.create_task(link.run())
        try:
            await asyncio.wait_for(finished.wait(), 60)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    first, most = BACKOFF
    # unreachable: 1 s, 2 s, 4 s (±20 %); registered: the heartbeat interval; heartbeat refused: at once;
    # the next registration attempt fails: 2 s (two failures in a row); registered again
    assert [within(d, first * 2**i) for i, d in enumerate(delays[:3])] == [True] * 3, delays
    assert within(delays[3], first * 8), delays
    assert 13.5 <= delays[4] <= 16.5 and delays[5] == 0.0 and within(delays[6], first * 2), delays
    assert all(d <= most * 1.2 for d in delays)
    assert link.registrations == 2 and link.registered.is_set()
    # a token-less pull after each registration: callbacks WeCom gave up on meanwhile are never coming
    await wait_until(lambda: _async(tokenless_pulls(sim, corp) == 3), what="two catch-up pulls")


async def _async(value: bool) -> bool:
    return value
