"""A puppet's connection may ack only what was delivered to it for that account: an ack naming one of
its accounts but carrying the id of another account's delivery resolves nothing (and an ack for an
account not proven on the connection closes it, tests/sockets/test_socket_protocol.py). On a manager in
the test's loop, driven through :meth:`~manager.sockets.PuppetSockets.deliver` as the dispatcher does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from manager.service import Manager
from tests.manager.conftest import PUPPET_SECRET, serving_sockets
from wxkf.delivery import DeliveryError
from wxkf.runtime import Runtime


@pytest.fixture
async def manager_url(runtime: Runtime) -> AsyncIterator[tuple[Manager, str]]:
    async with serving_sockets(runtime) as served:
        yield served


async def frame(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(10):
        answer: dict[str, Any] = json.loads(await ws.recv())
    return answer


async def test_an_ack_with_another_accounts_delivery_id_resolves_nothing(
    manager_url: tuple[Manager, str],
) -> None:
    manager, url = manager_url
    async with connect(url) as ws:
        for kf in ("wk1", "wk2"):
            auth = {"type": "auth", "id": kf, "corpId": "wwcorp", "kfId": kf, "webhookSecret": PUPPET_SECRET}
            await ws.send(json.dumps(auth))
        proofs = [await frame(ws), await frame(ws)]
        assert [p["type"] for p in proofs] == ["authed", "authed"], proofs
        delivered = asyncio.create_task(
            manager.sockets.deliver(
                "wwcorp/wk1",
                path="/callback/decrypted",
                query="",
                body=b'{"token": "t", "openKfId": "wk1"}',
                content_type="application/json",
                event_id="ev-1",
                secret=PUPPET_SECRET,
                timeout=30,
            )
        )
        delivery = await frame(ws)
        while delivery["type"] != "delivery" or delivery["account"] != "wwcorp/wk1":  # the proofs' own flow
            await ws.send(
                json.dumps(
                    {"type": "ack", "id": delivery["id"], "account": delivery["account"]} | {"status": 200}
                )
            )
            delivery = await frame(ws)
        # wk2 is this connection's too, but the delivery was wk1's: this ack must not deliver it
        await ws.send(
            json.dumps({"type": "ack", "id": delivery["id"], "account": "wwcorp/wk2", "status": 200})
        )
        await ws.send(
            json.dumps({"type": "ack", "id": delivery["id"], "account": "wwcorp/wk1", "status": 503})
        )
        with pytest.raises(DeliveryError) as failed:
            await asyncio.wait_for(delivered, 10)
        assert failed.value.status == 503  # the genuine ack decided, not the other account's
