"""Every receive type and kf event of the protocol reference gets its class; unknown ones stay raw."""

from __future__ import annotations

from typing import Any

import pytest

from puppets import (
    Bot,
    BusinessCardMessage,
    ChannelsMessage,
    ChannelsShopOrderMessage,
    ChannelsShopProductMessage,
    EnterSession,
    Event,
    FileMessage,
    ImageMessage,
    Incoming,
    LinkMessage,
    LocationMessage,
    MeetingMessage,
    MenuClick,
    MenuMessage,
    MergedMessage,
    Message,
    MiniprogramMessage,
    MsgSendFail,
    NoteMessage,
    RawMessage,
    RejectCustomerMsgSwitchChange,
    ScheduleMessage,
    ServicerRecallMsg,
    ServicerStatusChange,
    SessionStatusChange,
    TextMessage,
    UnknownEvent,
    UserRecallMsg,
    VideoMessage,
    VoiceMessage,
)
from puppets.messages import parse_item


def message(msgtype: str, body: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "msgid": "m1",
        "open_kfid": "wkA",
        "external_userid": "wmB",
        "send_time": 1700000000,
        "origin": 3,
        "msgtype": msgtype,
        msgtype: body,
        **top,
    }


def event(event_type: str, **fields: Any) -> dict[str, Any]:
    body = {"event_type": event_type, "open_kfid": "wkA", "external_userid": "wmB", **fields}
    return {"msgid": "e1", "send_time": 1700000000, "origin": 4, "msgtype": "event", "event": body}


MESSAGES = [
    ("text", {"content": "hi"}, TextMessage, {"text": "hi", "menu_id": ""}),
    ("text", {"content": "Yes", "menu_id": "101"}, MenuClick, {"text": "Yes", "menu_id": "101"}),
    ("image", {"media_id": "M"}, ImageMessage, {"media_id": "M"}),
    ("voice", {"media_id": "M"}, VoiceMessage, {"media_id": "M"}),
    ("video", {"media_id": "M"}, VideoMessage, {"media_id": "M"}),
    ("file", {"media_id": "M"}, FileMessage, {"media_id": "M"}),
    (
        "location",
        {"latitude": 23.1, "longitude": 113.3, "name": "Tower", "address": "GZ"},
        LocationMessage,
        {"latitude": 23.1, "longitude": 113.3, "name": "Tower", "address": "GZ"},
    ),
    (
        "link",
        {"title": "T", "desc": "D", "url": "U", "pic_url": "P"},
        LinkMessage,
        {"url": "U", "pic_url": "P"},
    ),
    ("business_card", {"userid": "zhangsan"}, BusinessCardMessage, {"userid": "zhangsan"}),
    (
        "miniprogram",
        {"appid": "wxA", "title": "T", "thumb_media_id": "M", "pagepath": "p"},
        MiniprogramMessage,
        {"appid": "wxA", "pagepath": "p"},
    ),
    (
        "msgmenu",
        {
            "head_content": "H",
            "list": [{"type": "click", "click": {"id": "1", "content": "a"}}],
            "tail_content": "T",
        },
        MenuMessage,
        {"head_content": "H", "tail_content": "T"},
    ),
    (
        "channels_shop_product",
        {"product_id": "p1", "title": "Tea"},
        ChannelsShopProductMessage,
        {"product_id": "p1"},
    ),
    (
        "channels_shop_order",
        {"order_id": "o1", "state": "paid"},
        ChannelsShopOrderMessage,
        {"order_id": "o1"},
    ),
    ("channels", {"sub_type": 1, "nickname": "N", "title": "T"}, ChannelsMessage, {"sub_type": 1}),
    ("merged_msg", {"title": "Chat", "item": [{"msgtype": "text"}]}, MergedMessage, {"title": "Chat"}),
    ("meeting", {"meetingid": "mt"}, MeetingMessage, {"meetingid": "mt"}),
    ("schedule", {"scheduleid": "sc"}, ScheduleMessage, {"scheduleid": "sc"}),
    ("note", {}, NoteMessage, {}),
    ("hologram", {"beam": 1}, RawMessage, {}),
]


@pytest.mark.parametrize(
    ("msgtype", "body", "cls", "expected"), MESSAGES, ids=[m[0] + m[2].__name__ for m in MESSAGES]
)
def test_each_receive_type_parses_to_its_class(
    msgtype: str, body: dict[str, Any], cls: type[Message], expected: dict[str, Any]
) -> None:
    parsed = parse_item(message(msgtype, body))
    assert type(parsed) is cls
    assert (parsed.msgid, parsed.open_kfid, parsed.customer, parsed.origin) == ("m1", "wkA", "wmB", 3)
    assert parsed.body == body and parsed.raw[msgtype] == body
    for name, value in expected.items():
        assert getattr(parsed, name) == value


EVENTS = [
    (
        event("enter_session", scene="qr", scene_param="spring", welcome_code="W"),
        EnterSession,
        {"scene": "qr", "scene_param": "spring", "welcome_code": "W", "event_code": "W"},
    ),
    (event("msg_send_fail", fail_msgid="x", fail_type=4), MsgSendFail, {"fail_msgid": "x", "fail_type": 4}),
    (
        event("servicer_status_change", servicer_userid="alice", status=2, stop_type=1),
        ServicerStatusChange,
        {"servicer_userid": "alice", "status": 2, "stop_type": 1},
    ),
    (
        event("session_status_change", change_type=3, old_servicer_userid="alice", msg_code="C"),
        SessionStatusChange,
        {"change_type": 3, "old_servicer_userid": "alice", "msg_code": "C", "event_code": "C"},
    ),
    (event("user_recall_msg", recall_msgid="r"), UserRecallMsg, {"recall_msgid": "r"}),
    (
        event("servicer_recall_msg", recall_msgid="r", servicer_userid="al"),
        ServicerRecallMsg,
        {"recall_msgid": "r"},
    ),
    (
        event("reject_customer_msg_switch_change", servicer_userid="al", reject_switch=1),
        RejectCustomerMsgSwitchChange,
        {"reject_switch": 1},
    ),
    (event("teleport", where="moon"), UnknownEvent, {"event_type": "teleport"}),
]


@pytest.mark.parametrize(("item", "cls", "expected"), EVENTS, ids=[e[1].__name__ for e in EVENTS])
def test_each_kf_event_parses_to_its_class(
    item: dict[str, Any], cls: type[Event], expected: dict[str, Any]
) -> None:
    parsed = parse_item(item)
    assert type(parsed) is cls
    assert parsed.open_kfid == "wkA" and parsed.customer == "wmB"  # taken from inside the event
    for name, value in expected.items():
        assert getattr(parsed, name) == value


def test_malformed_fields_become_defaults_instead_of_dropping_the_item() -> None:
    parsed = parse_item(message("location", {"latitude": "north", "longitude": None, "name": 7}))
    assert isinstance(parsed, LocationMessage)
    assert (parsed.latitude, parsed.longitude, parsed.name) == (0.0, 0.0, "7")
    weird = parse_item({"msgid": "x", "msgtype": "text", "text": "not an object"})
    assert isinstance(weird, TextMessage) and weird.text == ""


async def test_the_most_specific_handler_wins_and_servicer_messages_go_only_to_their_handler() -> None:
    bot = Bot()
    seen: list[tuple[str, str]] = []

    @bot.on_text
    async def text(message: TextMessage) -> None:
        seen.append(("text", message.text))

    @bot.on_message
    async def anything(message: Message) -> None:
        seen.append(("message", message.msgtype))

    @bot.on(Incoming)
    async def fallback(item: Incoming) -> None:
        seen.append(("incoming", item.msgtype))

    await bot.dispatch(parse_item(message("text", {"content": "hi"})))
    await bot.dispatch(parse_item(message("text", {"content": "Yes", "menu_id": "1"})))  # MenuClick → on_text
    await bot.dispatch(parse_item(message("image", {"media_id": "M"})))
    await bot.dispatch(parse_item(message("hologram", {})))
    await bot.dispatch(parse_item(event("enter_session")))
    await bot.dispatch(parse_item(message("text", {"content": "staff"}, origin=5, servicer_userid="alice")))
    assert seen == [
        ("text", "hi"),
        ("text", "Yes"),
        ("message", "image"),
        ("message", "hologram"),
        ("incoming", "event"),
    ]


def test_registering_twice_or_a_non_message_class_is_refused() -> None:
    bot = Bot()

    @bot.on_text
    async def first(message: TextMessage) -> None: ...

    with pytest.raises(ValueError, match="already registered"):
        bot.on_text(first)
    with pytest.raises(TypeError):
        bot.on(dict)  # type: ignore[type-var]


def test_a_sync_page_keeps_items_whatever_their_shape() -> None:
    """An item missing fields WeCom always sends must still reach the bot, not fail the whole page."""
    from puppets.pulling import Page

    page = Page.of(
        {"msg_list": [{"msgid": "odd", "msgtype": "text"}, "junk"], "next_cursor": "c2", "has_more": 1}
    )
    assert page == Page([{"msgid": "odd", "msgtype": "text"}], "c2", True)
    assert Page.of({"msg_list": None, "next_cursor": 7}) == Page([], "", False)
    odd = parse_item(page.items[0])
    assert isinstance(odd, TextMessage) and (odd.send_time, odd.origin) == (0, 0)


def test_derived_msgids_fit_wecoms_rule_and_differ_by_message_and_position() -> None:
    import re

    from puppets.sending import derive_msgid, is_repeated_msgid
    from wecom.errors import error_for

    ids = {derive_msgid("ww/wk", msgid, n) for msgid in ("a", "b") for n in range(3)}
    assert len(ids) == 6 and all(re.fullmatch(r"[0-9A-Za-z_-]{32}", i) for i in ids)
    assert derive_msgid("ww/wk", "a", 0) == derive_msgid("ww/wk", "a", 0) != derive_msgid("ww/wk2", "a", 0)
    assert is_repeated_msgid(error_for(40058, "msgid aZ_3 already used"))
    assert not is_repeated_msgid(error_for(40058, "invalid msgid: 1..32 characters of [0-9a-zA-Z_-]"))
    assert not is_repeated_msgid(error_for(95001, "msgid already used"))
