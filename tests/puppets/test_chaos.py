"""The issue's chaos test over HTTP: 200 items of every kind from four customers through a real
``wxkf up`` while the puppet is SIGKILLed twice mid-handling and the hub once; every item handled, in
order per customer, again only when its handler was cut off by a kill (and then marked), and no
customer receives any reply twice."""

from __future__ import annotations

from pathlib import Path

from tests.support.crash import crash_rig, two_puppet_kills_and_a_hub_kill
from wxkf.settings import Settings

CUSTOMERS = ("wmANNA", "wmBEN", "wmCHEN", "wmDORA")


async def test_200_items_through_two_puppet_kills_and_a_hub_kill_over_http(
    tmp_path: Path, settings: Settings
) -> None:
    async with crash_rig(tmp_path, settings, "http", customers=CUSTOMERS) as rig:
        await two_puppet_kills_and_a_hub_kill(rig)
