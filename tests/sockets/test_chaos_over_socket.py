"""The issue's chaos test on the WebSocket transport (``wxkf puppet --transport ws``): the same 200
items, kills and verdict as ``tests/puppets/test_chaos.py``."""

from __future__ import annotations

from pathlib import Path

from tests.puppets.test_chaos import CUSTOMERS
from tests.support.crash import crash_rig, two_puppet_kills_and_a_hub_kill
from wxkf.settings import Settings


async def test_200_items_through_two_puppet_kills_and_a_hub_kill_over_the_socket(
    tmp_path: Path, settings: Settings
) -> None:
    async with crash_rig(tmp_path, settings, "ws", customers=CUSTOMERS) as rig:
        await two_puppet_kills_and_a_hub_kill(rig)
