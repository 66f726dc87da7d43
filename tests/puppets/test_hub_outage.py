# ruff: noqa: F811 - fixtures are imported by name and then requested by name
"""A hub down between two heartbeats, longer than WeCom's retries: the puppet's next heartbeat
succeeds (the registration outlived the hub), so only the heartbeat answer's new ``upPeriod`` tells
it that callbacks were lost; it pulls without a token and the customer is answered.

The link's waits go through the test's ``sleep``, which plays the outage inside one heartbeat
interval: kill the hub, let WeCom give up on a callback, start the hub again. (No message goes
through the hub before the kill: the restarted manager would deliver it again, and the pull that
redelivery causes would bring the lost message in by chance.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx

from examples.echo import bot
from puppets.manager_link import ManagerLink
from simulator.state import SimState
from tests.puppets.conftest import Corp, Hosted, wait_until
from tests.puppets.test_lifecycle import sim_config, tokenless_pulls, unstarted_hub  # noqa: F401
from tests.puppets.test_manager_link import _async
from tests.support.services import ServiceProcess


async def test_a_hub_restarted_between_two_heartbeats_is_noticed_and_what_it_missed_is_answered(
    corp: Corp,
    sim: tuple[str, SimState],
    unstarted_hub: ServiceProcess,
    hosted: Callable[..., Awaitable[Hosted]],
) -> None:
    hub = unstarted_hub
    await hub.start()
    await corp.set_callback(f"{hub.url}/callback/{corp.corpid}")
    served = await hosted(bot, callback=False, safety_pull_interval=86400)
    await wait_until(lambda: _async(tokenless_pulls(sim, corp) == 1), what="the start-up pull")
    heartbeats = 0

    async def script(delay: float) -> None:
        nonlocal heartbeats
        heartbeats += 1
        if heartbeats == 1:  # registered; the hub goes away and comes back before the next heartbeat
            await wait_until(lambda: _async(tokenless_pulls(sim, corp) == 2), what="the registration's pull")
            hub.kill()
            await corp.says("while the hub is down", wait=True)  # every retry fails: WeCom gives up
            await hub.start()
        elif heartbeats > 2:
            await asyncio.Event().wait()  # one heartbeat after the outage, then no more

    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        link = ManagerLink(http, hub.url, served.url, served.account, sleep=script)
        running = asyncio.create_task(link.run())
        try:
            assert await corp.wait_received(1) == ["echo: while the hub is down"]
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    assert link.registrations == 1 and link.catch_ups == 1  # noticed by the heartbeat, not a new registration
