"""Callbacks: a real listener receives, verifies and decrypts them; retries, timeouts, URL verification."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from simulator import SimState, create_app
from tests.simulator.conftest import Acme, Sim
from tests.support.servers import serve_app
from wecom.crypto import MsgCrypt
from wecom.xml import parse_xml

Answer = Callable[[int], Awaitable[Response]]


@dataclass
class Listener:
    """A developer's callback server: checks every request like production code must."""

    crypt: MsgCrypt
    answer: Answer
    url: str = ""
    events: list[dict[str, str]] = field(default_factory=list)
    envelopes: list[dict[str, str]] = field(default_factory=list)
    hits: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: Request) -> Response:
        self.hits += 1
        query = request.query_params
        if request.method == "GET":
            plain = self.crypt.verify_url(
                query["msg_signature"], query["timestamp"], query["nonce"], query["echostr"]
            )
            return PlainTextResponse(plain)
        assert request.headers["content-type"].startswith("text/xml")
        envelope = parse_xml(await request.body())
        plain = self.crypt.open(
            query["msg_signature"], query["timestamp"], query["nonce"], envelope["Encrypt"]
        )
        self.envelopes.append(envelope)
        self.events.append(parse_xml(plain))
        self.arrived.set()
        return await self.answer(self.hits)


async def success(hit: int) -> Response:
    return PlainTextResponse("success")


@pytest.fixture
def answer() -> Answer:
    return success


@pytest.fixture
async def listener(acme: Acme, answer: Answer) -> AsyncIterator[Listener]:
    listener = Listener(acme.app.crypt(), answer)
    app = Starlette(routes=[Route("/callback", listener.handle, methods=["GET", "POST"])])
    async with serve_app(app) as url:
        listener.url = f"{url}/callback"
        acme.app.callback_url = listener.url
        yield listener


async def test_a_customer_message_arrives_encrypted_and_signed(
    sim: Sim, acme: Acme, listener: Listener
) -> None:
    result = await sim.customer_writes(acme, "where is my order?")
    [delivery] = result["deliveries"]
    assert delivery["outcome"] == "delivered" and delivery["kind"] == "kf_msg_or_event"
    assert [attempt["status"] for attempt in delivery["attempts"]] == [200]

    [envelope] = listener.envelopes
    assert envelope["ToUserName"] == acme.corpid and envelope["AgentID"] == str(acme.app.agentid)
    [event] = listener.events
    assert event["ToUserName"] == acme.corpid
    assert (event["MsgType"], event["Event"], event["OpenKfId"]) == (
        "event",
        "kf_msg_or_event",
        acme.open_kfid,
    )
    assert int(event["CreateTime"]) == int(sim.clock())

    # the Token in the callback unlocks sync_msg, which returns the message itself
    page = await sim.call(acme.app, "kf/sync_msg", {"open_kfid": acme.open_kfid, "token": event["Token"]})
    assert [item["text"]["content"] for item in page["msg_list"]] == ["where is my order?"]


async def test_the_control_request_does_not_wait_for_delivery(
    sim: Sim, acme: Acme, listener: Listener
) -> None:
    result = await sim.customer_writes(acme, wait=False)
    [delivery] = result["deliveries"]
    finished = await sim.control("GET", f"/deliveries/{delivery['id']}?wait=true")
    assert finished["outcome"] == "delivered"
    assert listener.arrived.is_set()
    listed = await sim.control("GET", f"/deliveries?corpid={acme.corpid}&kind=kf_msg_or_event")
    assert [item["id"] for item in listed["deliveries"]] == [delivery["id"]]


async def fail_twice(hit: int) -> Response:
    return PlainTextResponse("busy", status_code=500) if hit <= 2 else PlainTextResponse("success")


@pytest.mark.parametrize("answer", [fail_twice])
async def test_failed_callbacks_are_retried(sim: Sim, acme: Acme, listener: Listener) -> None:
    [delivery] = (await sim.customer_writes(acme))["deliveries"]
    assert delivery["outcome"] == "delivered"
    assert [(a["number"], a["status"], a["body"]) for a in delivery["attempts"]] == [
        (1, 500, "busy"),
        (2, 500, "busy"),
        (3, 200, "success"),
    ]
    assert all(a["latency_ms"] >= 0 for a in delivery["attempts"])
    assert len(listener.events) == 3
    assert len({event["Token"] for event in listener.events}) == 1  # the same request, re-sent


never = asyncio.Event()


async def never_answer(hit: int) -> Response:
    await never.wait()
    return PlainTextResponse("too late")


@pytest.mark.parametrize("answer", [never_answer])
async def test_a_silent_server_gets_three_retries_then_the_event_is_dropped(
    sim: Sim, acme: Acme, listener: Listener
) -> None:
    never.clear()
    try:
        [delivery] = (await sim.customer_writes(acme))["deliveries"]
    finally:
        never.set()  # let the listener's hanging handlers finish, so it shuts down promptly
    assert delivery["outcome"] == "failed"
    assert [(a["status"], a["error"]) for a in delivery["attempts"]] == [(None, "no answer within 0.3 s")] * 4
    assert listener.hits == 4


async def test_callbacks_go_to_every_managing_app_with_a_url(
    sim: Sim, acme: Acme, listener: Listener
) -> None:
    directory = sim.state.wecom.directory
    token, key = acme.app.token, acme.app.encoding_aes_key  # the same keys: one listener decrypts both
    second = directory.add_app(
        acme.corp, "second", callback_url=listener.url, token=token, encoding_aes_key=key
    )
    directory.add_app(acme.corp, "no url")
    directory.add_app(acme.corp, "not managing", callback_url=listener.url, token=token, encoding_aes_key=key)
    acme.account.managed_by = {acme.app.agentid, second.agentid}
    deliveries = (await sim.customer_writes(acme))["deliveries"]
    assert sorted(int(d["agentid"]) for d in deliveries) == [acme.app.agentid, second.agentid]
    assert all(d["outcome"] == "delivered" for d in deliveries)
    assert sorted(envelope["AgentID"] for envelope in listener.envelopes) == [
        str(acme.app.agentid),
        str(second.agentid),
    ]
    assert len({event["Token"] for event in listener.events}) == 2  # each app pulls with its own token


async def test_url_verification(sim: Sim, acme: Acme, listener: Listener) -> None:
    result = await sim.control("POST", f"/corps/{acme.corpid}/apps/{acme.app.agentid}/verify")
    assert result["ok"] is True and result["status"] == 200 and result["body"] == result["expected"]


async def test_url_verification_reports_a_wrong_answer(sim: Sim, acme: Acme) -> None:
    async def sloppy(request: Request) -> Response:
        return PlainTextResponse('"' + request.query_params["echostr"] + '"\n')

    async with serve_app(Starlette(routes=[Route("/cb", sloppy)])) as url:
        acme.app.callback_url = f"{url}/cb"
        result = await sim.control("POST", f"/corps/{acme.corpid}/apps/{acme.app.agentid}/verify")
    assert result["ok"] is False and result["status"] == 200


async def test_other_events_can_be_sent_raw(sim: Sim, acme: Acme, listener: Listener) -> None:
    fields = {"MsgType": "event", "Event": "change_external_contact", "ChangeType": "add_external_contact"}
    result = await sim.control(
        "POST", f"/corps/{acme.corpid}/apps/{acme.app.agentid}/callbacks?wait=true", {"fields": fields}
    )
    assert result["deliveries"][0]["outcome"] == "delivered"
    [event] = listener.events
    assert event["Event"] == "change_external_contact" and event["ToUserName"] == acme.corpid


async def test_enter_session_and_servicer_messages_also_notify(
    sim: Sim, acme: Acme, listener: Listener
) -> None:
    base = f"/corps/{acme.corpid}/accounts/{acme.open_kfid}"
    await sim.control(
        "POST", base + "/events?wait=true", {"event_type": "enter_session", "external_userid": acme.userid}
    )
    await sim.control(
        "POST",
        base + "/messages?wait=true",
        {
            "external_userid": acme.userid,
            "servicer_userid": "alice",
            "msgtype": "text",
            "text": {"content": "hi"},
        },
    )
    assert len(listener.events) == 2
    page = await sim.call(
        acme.app, "kf/sync_msg", {"open_kfid": acme.open_kfid, "token": listener.events[-1]["Token"]}
    )
    assert [(item["origin"], item["msgtype"]) for item in page["msg_list"]] == [(4, "event"), (5, "text")]
    assert page["msg_list"][1]["servicer_userid"] == "alice"


async def test_every_message_type_a_customer_can_send(sim: Sim, acme: Acme) -> None:
    bodies = {
        "text": {"content": "满意", "menu_id": "101"},  # a click on a msgmenu item
        "image": {},
        "voice": {},
        "video": {},
        "file": {},
        "location": {"latitude": 23.1, "longitude": 113.3, "name": "Canton Tower", "address": "Guangzhou"},
        "link": {
            "title": "t",
            "desc": "d",
            "url": "https://example.com",
            "pic_url": "https://example.com/p.png",
        },
        "business_card": {"userid": "zhangsan"},
        "miniprogram": {"appid": "wx1", "title": "t", "thumb_media_id": "m", "pagepath": "pages/index"},
        "channels_shop_product": {"product_id": "1", "title": "shoes"},
    }
    base = f"/corps/{acme.corpid}/accounts/{acme.open_kfid}/messages"
    for msgtype, body in bodies.items():
        await sim.control("POST", base, {"external_userid": acme.userid, "msgtype": msgtype, msgtype: body})
    token = sim.state.wecom.kf.issue_msg_token(acme.corp, acme.account)
    page = await sim.call(acme.app, "kf/sync_msg", {"open_kfid": acme.open_kfid, "token": token})
    assert [item["msgtype"] for item in page["msg_list"]] == list(bodies)
    image = page["msg_list"][1]["image"]["media_id"]
    media = await sim.http.get(
        "/cgi-bin/media/get", params={"access_token": await sim.token(acme.app), "media_id": image}
    )
    assert media.status_code == 200 and media.headers["content-type"] == "image/png"


async def test_shutdown_cancels_deliveries_in_flight(state: SimState, acme: Acme) -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def hang(request: Request) -> Response:
        arrived.set()
        await release.wait()
        return PlainTextResponse("success")

    sim_app = create_app(state)
    async with serve_app(Starlette(routes=[Route("/cb", hang, methods=["POST"])])) as url:
        acme.app.callback_url = f"{url}/cb"
        async with serve_app(sim_app, lifespan="on") as sim_url:
            async with httpx.AsyncClient(base_url=sim_url, trust_env=False) as http:
                response = await http.post(
                    f"/sim/corps/{acme.corpid}/accounts/{acme.open_kfid}/messages",
                    json={"msgtype": "text", "text": {"content": "x"}},
                )
                delivery_id = response.json()["deliveries"][0]["id"]
            await asyncio.wait_for(arrived.wait(), 5)
        release.set()
    assert sim_app.state.courier.deliveries[delivery_id].outcome == "cancelled"
