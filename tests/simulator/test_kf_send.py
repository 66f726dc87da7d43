"""kf/send_msg, kf/send_msg_on_event and kf/service_state over HTTP."""

from __future__ import annotations

from typing import Any

from simulator.wecom import errcodes as E
from tests.simulator.conftest import Acme, Sim

HOUR = 3600


def text(acme: Acme, content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {
        "touser": acme.userid,
        "open_kfid": acme.open_kfid,
        "msgtype": "text",
        "text": {"content": content},
        **extra,
    }


async def send(sim: Sim, acme: Acme, **extra: Any) -> dict[str, Any]:
    return await sim.call(acme.app, "kf/send_msg", text(acme, **extra))


async def test_nothing_can_be_sent_before_the_customer_writes(sim: Sim, acme: Acme) -> None:
    assert (await send(sim, acme))["errcode"] == E.SEND_WINDOW_EXPIRED


async def test_at_most_five_messages_until_the_customer_writes_again(sim: Sim, acme: Acme) -> None:
    await sim.customer_writes(acme)
    codes = [(await send(sim, acme))["errcode"] for _ in range(6)]
    assert codes == [0, 0, 0, 0, 0, E.SEND_COUNT_LIMIT]
    await sim.customer_writes(acme, "again")
    assert (await send(sim, acme))["errcode"] == 0


async def test_the_48_hour_window_counts_from_the_customers_last_message(sim: Sim, acme: Acme) -> None:
    await sim.customer_writes(acme)
    sim.clock.advance(47 * HOUR)
    assert (await send(sim, acme))["errcode"] == 0
    sim.clock.advance(HOUR + 1)
    assert (await send(sim, acme))["errcode"] == E.SEND_WINDOW_EXPIRED
    await sim.customer_writes(acme)
    assert (await send(sim, acme))["errcode"] == 0


async def test_sent_messages_reach_the_customer(sim: Sim, acme: Acme) -> None:
    await sim.customer_writes(acme)
    sent = await send(sim, acme, content="your order shipped")
    received = await sim.control("GET", f"/corps/{acme.corpid}/customers/{acme.userid}/received")
    assert [(m["msgid"], m["text"]["content"], m["via_api"]) for m in received["messages"]] == [
        (sent["msgid"], "your order shipped", True)
    ]


async def test_msgid_format_and_uniqueness(sim: Sim, acme: Acme) -> None:
    await sim.customer_writes(acme)
    assert await send(sim, acme, msgid="order-42_a") == {"errcode": 0, "errmsg": "ok", "msgid": "order-42_a"}
    assert (await send(sim, acme, msgid="order-42_a"))["errcode"] == E.INVALID_PARAMETER
    assert (await send(sim, acme, msgid="has space"))["errcode"] == E.INVALID_PARAMETER
    assert (await send(sim, acme, msgid="x" * 33))["errcode"] == E.INVALID_PARAMETER
    generated = {(await send(sim, acme))["msgid"] for _ in range(2)}
    assert len(generated) == 2


async def test_request_validation(sim: Sim, acme: Acme) -> None:
    await sim.customer_writes(acme)
    cases = [
        ({**text(acme), "touser": "wmnobody"}, E.INVALID_EXTERNAL_USERID),
        ({**text(acme), "open_kfid": "wknope"}, E.OPEN_KFID_NOT_FOUND),
        ({**text(acme), "msgtype": "sticker"}, E.INVALID_MSGTYPE),
        ({**text(acme), "text": {"content": "x" * 2049}}, E.CONTENT_TOO_LONG),
        ({**text(acme), "text": {"content": ""}}, E.EMPTY_CONTENT),
        ({**text(acme), "msgtype": "image", "image": {"media_id": "nope"}}, E.INVALID_MEDIA_ID),
    ]
    for body, code in cases:
        assert (await sim.call(acme.app, "kf/send_msg", body))["errcode"] == code, body
    # none of the refused calls used up the five-message allowance
    assert [(await send(sim, acme))["errcode"] for _ in range(5)] == [0] * 5


async def get_state(sim: Sim, acme: Acme) -> dict[str, Any]:
    return await sim.call(
        acme.app, "kf/service_state/get", {"open_kfid": acme.open_kfid, "external_userid": acme.userid}
    )


async def trans(sim: Sim, acme: Acme, state: int, servicer: str | None = None) -> dict[str, Any]:
    body = {"open_kfid": acme.open_kfid, "external_userid": acme.userid, "service_state": state}
    if servicer:
        body["servicer_userid"] = servicer
    return await sim.call(acme.app, "kf/service_state/trans", body)


async def test_service_state_transitions_and_msg_codes(sim: Sim, acme: Acme) -> None:
    assert (await get_state(sim, acme))["service_state"] == 4
    assert (await trans(sim, acme, 1))["errcode"] == E.SESSION_ENDED
    await sim.customer_writes(acme)
    assert (await get_state(sim, acme))["service_state"] == 0

    assert await trans(sim, acme, 1) == {"errcode": 0, "errmsg": "ok"}
    assert (await send(sim, acme))["errcode"] == 0  # the assistant (API) may answer
    assert (await trans(sim, acme, 0))["errcode"] == E.TRANSITION_NOT_ALLOWED
    queued = await trans(sim, acme, 2)
    assert queued["errcode"] == 0 and queued["msg_code"]
    assert (await send(sim, acme))["errcode"] == E.STATE_FORBIDS_SENDING
    assert (await trans(sim, acme, 3, "mallory"))["errcode"] == E.NOT_A_SERVICER
    assert (await trans(sim, acme, 3, "alice"))["errcode"] == 0
    assert await get_state(sim, acme) == {
        "errcode": 0,
        "errmsg": "ok",
        "service_state": 3,
        "servicer_userid": "alice",
    }
    ended = await trans(sim, acme, 4)
    assert ended["errcode"] == 0 and ended["msg_code"]

    farewell = await sim.call(
        acme.app,
        "kf/send_msg_on_event",
        {"code": ended["msg_code"], "msgtype": "text", "text": {"content": "bye"}},
    )
    assert farewell["errcode"] == 0
    assert (await send(sim, acme))["errcode"] == E.STATE_FORBIDS_SENDING
    await sim.customer_writes(acme, "back again")
    assert (await get_state(sim, acme))["service_state"] == 0


async def test_invalid_target_state(sim: Sim, acme: Acme) -> None:
    await sim.customer_writes(acme)
    assert (await trans(sim, acme, 7))["errcode"] == E.INVALID_PARAMETER


async def enter(sim: Sim, acme: Acme, **extra: Any) -> dict[str, Any]:
    path = f"/corps/{acme.corpid}/accounts/{acme.open_kfid}/events"
    body = {"event_type": "enter_session", "external_userid": acme.userid, "scene": "ad", **extra}
    result: dict[str, Any] = await sim.control("POST", path, body)
    return result


async def welcome(sim: Sim, acme: Acme, code: str, content: str = "welcome!") -> int:
    body = {"code": code, "msgtype": "text", "text": {"content": content}}
    errcode: int = (await sim.call(acme.app, "kf/send_msg_on_event", body))["errcode"]
    return errcode


async def test_welcome_code_is_single_use(sim: Sim, acme: Acme) -> None:
    entered = await enter(sim, acme)
    code = entered["welcome_code"]
    assert entered["message"]["event"]["welcome_code"] == code
    assert await welcome(sim, acme, code) == 0
    assert await welcome(sim, acme, code) == E.INVALID_PARAMETER
    received = await sim.control("GET", f"/corps/{acme.corpid}/customers/{acme.userid}/received")
    assert [m["text"]["content"] for m in received["messages"]] == ["welcome!"]


async def test_welcome_code_is_valid_20_seconds(sim: Sim, acme: Acme) -> None:
    first = (await enter(sim, acme))["welcome_code"]
    sim.clock.advance(20)
    assert await welcome(sim, acme, first) == 0
    second = (await enter(sim, acme, welcome=True))["welcome_code"]
    sim.clock.advance(20.5)
    assert await welcome(sim, acme, second) == E.INVALID_PARAMETER


async def test_no_welcome_code_within_48_hours_of_the_last_welcome(sim: Sim, acme: Acme) -> None:
    assert await welcome(sim, acme, (await enter(sim, acme))["welcome_code"]) == 0
    assert (await enter(sim, acme))["welcome_code"] is None
    sim.clock.advance(48 * HOUR + 1)
    assert (await enter(sim, acme))["welcome_code"] is not None


async def test_event_replies_are_text_or_menu_only(sim: Sim, acme: Acme) -> None:
    code = (await enter(sim, acme))["welcome_code"]
    body = {"code": code, "msgtype": "image", "image": {"media_id": "x"}}
    assert (await sim.call(acme.app, "kf/send_msg_on_event", body))["errcode"] == E.INVALID_MSGTYPE
    menu = {
        "head_content": "How can we help?",
        "list": [{"type": "click", "click": {"id": "1", "content": "Orders"}}],
    }
    body = {"code": code, "msgtype": "msgmenu", "msgmenu": menu}
    assert (await sim.call(acme.app, "kf/send_msg_on_event", body))["errcode"] == 0


async def test_enter_session_stores_the_context_for_batchget(sim: Sim, acme: Acme) -> None:
    await enter(sim, acme, scene_param="campaign-7")
    body = {"external_userid_list": [acme.userid, "wmnobody"], "need_enter_session_context": 1}
    payload = await sim.call(acme.app, "kf/customer/batchget", body)
    assert payload["invalid_external_userid"] == ["wmnobody"]
    [customer] = payload["customer_list"]
    assert customer["nickname"] == "Bob"
    assert customer["enter_session_context"] == {"scene": "ad", "scene_param": "campaign-7"}
