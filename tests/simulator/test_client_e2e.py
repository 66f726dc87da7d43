"""The protocol library against the simulator: both sides read the same reference, so they must agree.

A callback goes from the simulator to a listener that handles it with the library only
(:class:`~wecom.models.CallbackEnvelope`, :func:`~wecom.models.parse_event`, :class:`MsgCrypt`), which
then pulls and answers with :class:`~wecom.client.WeComClient`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tests.simulator.conftest import Acme, Sim
from tests.support.servers import serve_app
from wecom import (
    CallbackEnvelope,
    GetTokenProvider,
    KfMsgOrEvent,
    WeComClient,
    WeComHttp,
    fetch_access_token,
    parse_event,
    robot_send,
)
from wecom.errors import (
    InvalidMsgToken,
    OpenKfIdNotFound,
    RobotRemoved,
    SendCountLimit,
    SendWindowExpired,
    StateForbidsSending,
)


@pytest.fixture
async def client(sim: Sim, acme: Acme) -> AsyncIterator[WeComClient]:
    base = f"{sim.url}/cgi-bin"
    async with WeComHttp() as http:
        tokens = GetTokenProvider(
            lambda: fetch_access_token(http, base, acme.corpid, acme.app.secret), clock=sim.clock
        )
        yield WeComClient(http, base, tokens)


async def test_callback_pull_and_reply(sim: Sim, acme: Acme, client: WeComClient) -> None:
    crypt = acme.app.crypt()
    events: asyncio.Queue[KfMsgOrEvent] = asyncio.Queue()

    async def callback(request: Request) -> Response:
        query = request.query_params
        envelope = CallbackEnvelope.from_xml(await request.body())
        plain = crypt.open(query["msg_signature"], query["timestamp"], query["nonce"], envelope.encrypt)
        event = parse_event(plain)
        assert isinstance(event, KfMsgOrEvent)
        events.put_nowait(event)
        return PlainTextResponse("success")

    async with serve_app(Starlette(routes=[Route("/callback", callback, methods=["POST"])])) as url:
        acme.app.callback_url = f"{url}/callback"
        await sim.customer_writes(acme, "hello from WeChat")
        event = await asyncio.wait_for(events.get(), 5)

    assert (event.to_user_name, event.open_kf_id) == (acme.corpid, acme.open_kfid)
    result = await client.kf_sync_msg(event.open_kf_id, token=event.token)
    [message] = result.msg_list
    assert (message.msgtype, message.body["content"], message.origin) == ("text", "hello from WeChat", 3)
    assert not result.has_more and result.next_cursor

    msgid = await client.kf_send_msg(
        message.external_userid or "", acme.open_kfid, "text", {"content": "hi!"}
    )
    received = await sim.control("GET", f"/corps/{acme.corpid}/customers/{acme.userid}/received")
    assert [m["msgid"] for m in received["messages"]] == [msgid]


async def test_typed_errors(sim: Sim, acme: Acme, client: WeComClient) -> None:
    with pytest.raises(SendWindowExpired):
        await client.kf_send_msg(acme.userid, acme.open_kfid, "text", {"content": "too early"})
    await sim.customer_writes(acme)
    for _ in range(5):
        await client.kf_send_msg(acme.userid, acme.open_kfid, "text", {"content": "x"})
    with pytest.raises(SendCountLimit):
        await client.kf_send_msg(acme.userid, acme.open_kfid, "text", {"content": "one too many"})
    await sim.customer_writes(acme)
    await client.kf_service_state_trans(acme.open_kfid, acme.userid, 2)
    with pytest.raises(StateForbidsSending):
        await client.kf_send_msg(acme.userid, acme.open_kfid, "text", {"content": "queued"})
    with pytest.raises(InvalidMsgToken):
        await client.kf_sync_msg(acme.open_kfid, token="ENCforged")
    with pytest.raises(OpenKfIdNotFound):
        await client.kf_sync_msg("wknope", token="ENCforged")


async def test_token_invalidated_early_costs_one_retry(sim: Sim, acme: Acme, client: WeComClient) -> None:
    assert [a.open_kfid for a in await client.kf_accounts_all()] == [acme.open_kfid]
    await sim.control("POST", "/tokens/invalidate", {"corpid": acme.corpid})
    assert [a.manage_privilege for a in await client.kf_accounts_all()] == [True]
    assert acme.app.gettoken_calls == 2


async def test_accounts_media_sessions_customers(sim: Sim, acme: Acme, client: WeComClient) -> None:
    uploaded = await client.media_upload("image", "avatar.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 8)
    assert await client.media_get(uploaded.media_id) == b"\x89PNG\r\n\x1a\n" + b"\x00" * 8
    open_kfid = await client.kf_account_add("Sales", uploaded.media_id)
    assert "kfid" in await client.kf_add_contact_way(open_kfid, "promo")
    await client.kf_account_update(open_kfid, name="Sales EU")
    assert {a.name for a in await client.kf_accounts_all()} == {"Support", "Sales EU"}
    await client.kf_account_del(open_kfid)

    await sim.customer_writes(acme)
    assert await client.kf_service_state_get(acme.open_kfid, acme.userid) == (0, None)
    assert await client.kf_service_state_trans(acme.open_kfid, acme.userid, 3, "alice")
    assert await client.kf_service_state_get(acme.open_kfid, acme.userid) == (3, "alice")
    customers, invalid = await client.kf_customer_batchget([acme.userid, "wmghost"])
    assert [c.nickname for c in customers] == ["Bob"] and invalid == ["wmghost"]


async def test_robot(sim: Sim) -> None:
    robot = await sim.control("POST", "/robots", {})
    async with WeComHttp() as http:
        await robot_send(
            http,
            f"{sim.url}/cgi-bin",
            robot["key"],
            {"msgtype": "markdown", "markdown": {"content": "**hi**"}},
        )
        await sim.control("DELETE", f"/robots/{robot['key']}")
        with pytest.raises(RobotRemoved):
            await robot_send(
                http, f"{sim.url}/cgi-bin", robot["key"], {"msgtype": "text", "text": {"content": "x"}}
            )
