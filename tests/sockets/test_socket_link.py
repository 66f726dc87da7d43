"""The puppet's side of the socket against a stand-in manager in the test's loop: it proves its account,
refuses a delivery frame whose signature is forged (401 ack) and takes a genuine one, and reconnects after
the manager drops the connection, resuming with its webhookSecret."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from puppets.bot import Bot
from simulator.state import SimState
from tests.puppets.conftest import Corp, Hosted
from tests.support.servers import serve_app
from wxkf import webhooks


class StandIn:
    """Each connection the puppet opens arrives in ``connections``; the test drives it."""

    def __init__(self) -> None:
        self.connections: asyncio.Queue[tuple[WebSocket, asyncio.Event]] = asyncio.Queue()

    async def endpoint(self, websocket: WebSocket) -> None:
        await websocket.accept()
        done = asyncio.Event()
        await self.connections.put((websocket, done))
        await done.wait()  # the test closes it, or lets the test's end do so


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[StandIn, str]]:
    manager = StandIn()
    app = Starlette(routes=[WebSocketRoute("/puppetWxkfManager/ws", manager.endpoint)])
    async with serve_app(app) as url:
        yield manager, url


async def receive(websocket: WebSocket) -> dict[str, Any]:
    async with asyncio.timeout(20):
        frame: dict[str, Any] = json.loads(await websocket.receive_text())
    return frame


def delivery(corp: Corp, secret: str, frame_id: str) -> dict[str, Any]:
    body = json.dumps({"token": "tok-" + frame_id, "openKfId": corp.kf})
    headers = {"content-type": "application/json", **webhooks.headers(secret, "ev" + frame_id, body.encode())}
    account = f"{corp.corpid}/{corp.kf}"
    return {"type": "delivery", "id": frame_id, "account": account, "path": "/callback/decrypted"} | {
        "query": "",
        "headers": headers,
        "body": body,
    }


async def test_the_puppet_refuses_a_forged_frame_and_resumes_after_the_manager_drops_it(
    corp: Corp,
    sim: tuple[str, SimState],
    stand_in: tuple[StandIn, str],
    hosted: Callable[..., Awaitable[Hosted]],
) -> None:
    manager, url = stand_in
    running = await hosted(
        Bot(), callback=False, manager=url, transport="ws", token_url=f"{sim[0]}/cgi-bin/gettoken"
    )
    websocket, done = await asyncio.wait_for(manager.connections.get(), 20)
    auth = await receive(websocket)
    assert auth["type"] == "auth" and auth["kfId"] == corp.kf
    assert auth["corpSecret"] == corp.secret and "webhookSecret" not in auth  # first time: register
    secret = webhooks.generate_secret()
    answer = {"type": "authed", "id": auth["id"], "account": f"{corp.corpid}/{corp.kf}", "openKfId": corp.kf}
    await websocket.send_text(json.dumps(answer | {"webhookSecret": secret}))

    await websocket.send_text(json.dumps(delivery(corp, webhooks.generate_secret(), "1")))  # forged
    forged = await receive(websocket)
    assert (forged["type"], forged["id"], forged["status"]) == ("ack", "1", 401)
    assert forged["message"] == "bad_webhook_signature"
    await websocket.send_text(json.dumps(delivery(corp, secret, "2")))
    genuine = await receive(websocket)
    assert (genuine["type"], genuine["id"], genuine["status"]) == ("ack", "2", 200)

    await websocket.close(1012)  # the manager restarts
    done.set()
    again, done_again = await asyncio.wait_for(manager.connections.get(), 20)  # after its backoff
    resumed = await receive(again)
    assert resumed["type"] == "auth" and resumed["webhookSecret"] == secret and "corpSecret" not in resumed
    await again.send_text(json.dumps(answer | {"id": resumed["id"]}))
    await again.send_text(json.dumps(delivery(corp, secret, "3")))
    assert (await receive(again))["status"] == 200
    assert running.host.socket_link is not None and running.host.socket_link.connections == 2
    done_again.set()
