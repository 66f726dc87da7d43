"""The bounds an unauthenticated caller meets, on a manager in the test's loop with small limits: how many
connections may wait for a first proof at once, and how many accounts one connection may hold."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from manager.service import Manager
from manager.sockets import PuppetSockets, SocketLimits
from tests.manager.conftest import PUPPET_SECRET, serving_sockets
from wxkf.runtime import Runtime

LIMITS = SocketLimits(unproven_connections=2, accounts=1, proof_deadline=60.0)


@pytest.fixture
async def manager_url(runtime: Runtime) -> AsyncIterator[tuple[Manager, str]]:
    async with serving_sockets(runtime, PuppetSockets(LIMITS)) as served:
        yield served


async def prove(ws: ClientConnection, kf: str) -> dict[str, Any]:
    await ws.send(
        json.dumps({"type": "auth", "id": kf, "corpId": "wwcorp", "kfId": kf, "webhookSecret": PUPPET_SECRET})
    )
    answer: dict[str, Any] = json.loads(await ws.recv())
    return answer


async def test_connections_waiting_for_a_proof_are_bounded_and_a_proof_frees_a_place(
    manager_url: tuple[Manager, str],
) -> None:
    manager, url = manager_url
    async with connect(url) as first, connect(url) as second:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url):
                pass
        assert refused.value.response.status_code == 403
        assert (await prove(first, "wk1"))["type"] == "authed"
        assert manager.sockets.unproven == 1
        async with connect(url) as third:  # the proof made room
            assert manager.sockets.unproven == 2
            await third.close()
        await second.close()


async def test_one_connection_holds_at_most_the_accounts_limit(manager_url: tuple[Manager, str]) -> None:
    manager, url = manager_url
    async with connect(url) as ws:
        assert (await prove(ws, "wk1"))["type"] == "authed"
        refused = await prove(ws, "wk2")
        assert (refused["type"], refused["reason"]) == ("refused", "too_many_accounts")
        assert manager.sockets.connected("wwcorp/wk1") and not manager.sockets.connected("wwcorp/wk2")
