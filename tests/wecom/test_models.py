"""Decrypted events: kf_msg_or_event is strict (it is routed), everything else is kept raw, never refused."""

from __future__ import annotations

import pytest

from wecom.models import CallbackEnvelope, EventError, KfMessage, KfMsgOrEvent, RawEvent, parse_event
from wecom.xml import XMLError, build_xml, callback_body

KF_EVENT = (
    b"<xml><ToUserName><![CDATA[ww12345678910]]></ToUserName><CreateTime>1348831860</CreateTime>"
    b"<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]></Event>"
    b"<Token><![CDATA[ENCApHxnGDNAVNY4AaSJKj4Tb5mwsEMzxhFmHVGcra996NR]]></Token>"
    b"<OpenKfId><![CDATA[wkxxxxxxx]]></OpenKfId></xml>"
)


def kf_event(**overrides: str | None) -> bytes:
    fields: dict[str, str | int] = {
        "ToUserName": "ww1",
        "CreateTime": 1348831860,
        "MsgType": "event",
        "Event": "kf_msg_or_event",
        "Token": "tok",
        "OpenKfId": "wk1",
    }
    for key, value in overrides.items():
        if value is None:
            del fields[key]
        else:
            fields[key] = value
    return build_xml(fields).encode()


def test_kf_msg_or_event() -> None:
    event = parse_event(KF_EVENT)
    assert event == KfMsgOrEvent(
        to_user_name="ww12345678910",
        create_time=1348831860,
        token="ENCApHxnGDNAVNY4AaSJKj4Tb5mwsEMzxhFmHVGcra996NR",
        open_kf_id="wkxxxxxxx",
    )
    assert "ENCApHxn" not in repr(event)


@pytest.mark.parametrize("missing", ["Token", "OpenKfId", "ToUserName"])
def test_kf_event_without_routing_fields_is_an_error(missing: str) -> None:
    with pytest.raises(EventError) as exc:
        parse_event(kf_event(**{missing: None}))
    assert (exc.value.reason, exc.value.field) == ("missing_field", missing)
    with pytest.raises(EventError):
        parse_event(kf_event(**{missing: ""}))


def test_kf_event_create_time_is_optional() -> None:
    event = parse_event(kf_event(CreateTime=None))
    assert isinstance(event, KfMsgOrEvent) and event.create_time is None


@pytest.mark.parametrize(
    ("fields", "msg_type", "event_name"),
    [
        (
            {"MsgType": "event", "Event": "change_external_contact", "ChangeType": "add_external_contact"},
            "event",
            "change_external_contact",
        ),
        ({"MsgType": "text", "Content": "hello"}, "text", None),
        ({"MsgType": "brand_new_type"}, "brand_new_type", None),
        ({"Something": "odd"}, None, None),
        (
            {"MsgType": "event", "Event": "kf_account_auth_change", "AuthAddOpenKfId": "wk9"},
            "event",
            "kf_account_auth_change",
        ),
    ],
)
def test_other_events_are_kept_raw(
    fields: dict[str, str], msg_type: str | None, event_name: str | None
) -> None:
    doc = build_xml({"ToUserName": "ww1", "CreateTime": "notanumber", **fields})
    event = parse_event(doc)
    assert isinstance(event, RawEvent)
    assert (event.to_user_name, event.msg_type, event.event, event.create_time) == (
        "ww1",
        msg_type,
        event_name,
        None,
    )
    assert event.fields == {"ToUserName": "ww1", "CreateTime": "notanumber", **fields}


def test_nested_non_kf_event_is_kept_raw() -> None:
    doc = (
        "<xml><ToUserName>ww1</ToUserName><MsgType>event</MsgType><Event>location_select</Event>"
        "<SendLocationInfo><Location_X>23.1</Location_X><Poiname><![CDATA[x]]></Poiname></SendLocationInfo></xml>"
    )
    event = parse_event(doc)
    assert isinstance(event, RawEvent)
    assert event.fields["SendLocationInfo"] == "<Location_X>23.1</Location_X><Poiname>x</Poiname>"


def test_bad_xml_is_an_xml_error() -> None:
    with pytest.raises(XMLError):
        parse_event(b"<xml><Event>kf_msg_or_event</Event>")


def test_callback_envelope() -> None:
    envelope = CallbackEnvelope.from_xml(callback_body("ww1", "ENCRYPTED", 218).encode())
    assert envelope == CallbackEnvelope(to_user_name="ww1", encrypt="ENCRYPTED", agent_id="218")
    assert "ENCRYPTED" not in repr(envelope)
    assert CallbackEnvelope.from_xml(callback_body("ww1", "E")).agent_id is None
    with pytest.raises(EventError) as exc:
        CallbackEnvelope.from_xml(build_xml({"ToUserName": "ww1"}))
    assert exc.value.field == "Encrypt"


# -- kf/sync_msg items -----------------------------------------------------------------------------


def test_text_message_item() -> None:
    item = {
        "msgid": "from_msgid_4622416642169452483",
        "open_kfid": "wkAJ2GCAAASSm4_FhToWMFea0xAFfd3Q",
        "external_userid": "wmAJ2GCAAAme1XQRC-NI-q0_ZM9ukoAw",
        "send_time": 1615478585,
        "origin": 3,
        "msgtype": "text",
        "text": {"content": "hello", "menu_id": "101"},
    }
    message = KfMessage.model_validate(item)
    assert message.body == {"content": "hello", "menu_id": "101"}
    assert message.servicer_userid is None and message.event_type is None
    assert message.raw == item


def test_event_item_without_top_level_ids() -> None:
    message = KfMessage.model_validate(
        {
            "msgid": "m2",
            "send_time": 1615478585,
            "origin": 4,
            "msgtype": "event",
            "event": {"event_type": "enter_session", "open_kfid": "wk1", "welcome_code": "aaa"},
        }
    )
    assert (message.open_kfid, message.external_userid) == (None, None)
    assert message.event_type == "enter_session"
    assert message.body["welcome_code"] == "aaa"


def test_unknown_message_type_is_kept() -> None:
    message = KfMessage.model_validate(
        {
            "msgid": "m3",
            "send_time": 1,
            "origin": 3,
            "msgtype": "hologram",
            "hologram": {"x": 1},
            "new_field": 7,
        }
    )
    assert message.body == {"x": 1}
    assert message.raw["new_field"] == 7


def test_message_without_its_body() -> None:
    assert KfMessage.model_validate({"msgid": "m", "send_time": 1, "origin": 3, "msgtype": "text"}).body == {}
