"""Hostile or broken frames from whatever answers at the manager's address (a buggy or compromised
manager, a proxy in the way of a ``ws://`` URL) must not end the puppet's socket link: it drops the
connection and reconnects, as after any other loss. Before, a frame json.loads could not decode
without a RecursionError (deep nesting, well under the 1 MiB frame bound) escaped the link's loop and
the puppet never connected again, silently."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable

import pytest

from puppets.bot import Bot
from simulator.state import SimState
from tests.puppets.conftest import Corp, Hosted, corp, hosted, sim, sim_config
from tests.sockets.test_socket_link import StandIn, receive, stand_in

__all__ = ["corp", "hosted", "sim", "sim_config", "stand_in"]


@pytest.mark.parametrize(
    "hostile",
    ["[" * 200_000, '{"id": ' + "[" * 200_000 + "}"],
    ids=["deeply nested array", "deeply nested id"],
)
async def test_a_frame_nested_too_deep_to_decode_does_not_end_the_socket_link(
    corp: Corp,
    sim: tuple[str, SimState],
    stand_in: tuple[StandIn, str],
    hosted: Callable[..., Awaitable[Hosted]],
    hostile: str,
) -> None:
    manager, url = stand_in
    await hosted(Bot(), callback=False, manager=url, transport="ws", token_url=f"{sim[0]}/cgi-bin/gettoken")
    websocket, done = await asyncio.wait_for(manager.connections.get(), 20)
    auth = await receive(websocket)
    assert auth["type"] == "auth"
    await websocket.send_text(hostile)
    # the link goes on: it answers later frames on this connection, or reconnects
    answer = {"type": "authed", "id": auth["id"], "account": f"{corp.corpid}/{corp.kf}", "openKfId": corp.kf}
    with contextlib.suppress(Exception):  # the puppet dropped this connection: it must come back
        await websocket.send_text(json.dumps(answer))
    done.set()
    again, done_again = await asyncio.wait_for(manager.connections.get(), 30)
    assert (await receive(again))["type"] == "auth"
    done_again.set()
