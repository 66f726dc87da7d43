"""The simulator's rules without HTTP: session state machine, send rules, cursors, pages, limits."""

from __future__ import annotations

import pytest

from simulator.config import Rate
from simulator.ratelimit import Limits, SlidingWindow
from simulator.wecom import errcodes as E
from simulator.wecom.directory import LogEntry
from simulator.wecom.errcodes import ApiError
from simulator.wecom.messages import (
    check_msgid,
    check_outgoing,
    decode_cursor,
    encode_cursor,
    first_readable,
    read_page,
)
from simulator.wecom.sessions import ASSISTANT, ENDED, HUMAN, QUEUED, TRANSITIONS, UNTREATED, Session
from tests.support.clock import FakeClock

HOUR = 3600.0
WINDOW = 48 * HOUR


def errcode(exc: pytest.ExceptionInfo[ApiError]) -> int:
    return exc.value.errcode


# -- sessions ------------------------------------------------------------------------------------


def test_a_customer_message_opens_an_untreated_session() -> None:
    session = Session()
    assert session.state == ENDED
    session.customer_wrote(0.0, WINDOW)
    assert session.state == UNTREATED


@pytest.mark.parametrize(
    ("start", "target", "allowed"),
    [(s, t, t in TRANSITIONS[s]) for s in (UNTREATED, ASSISTANT, QUEUED, HUMAN) for t in range(5)],
)
def test_transitions_follow_the_table(start: int, target: int, allowed: bool) -> None:
    session = Session(
        state=start, last_customer_msg_at=0.0, servicer_userid="alice" if start == HUMAN else None
    )
    if allowed:
        session.transition(target, "bob", ["alice", "bob"], 1.0, WINDOW)
        assert session.state == target
    else:
        with pytest.raises(ApiError) as exc:
            session.transition(target, "bob", ["alice", "bob"], 1.0, WINDOW)
        assert errcode(exc) == E.TRANSITION_NOT_ALLOWED


def test_nothing_leaves_an_ended_session() -> None:
    with pytest.raises(ApiError) as exc:
        Session().transition(ASSISTANT, None, [], 0.0, WINDOW)
    assert errcode(exc) == E.SESSION_ENDED


def test_human_needs_a_servicer_of_the_account() -> None:
    session = Session(state=UNTREATED, last_customer_msg_at=0.0)
    with pytest.raises(ApiError) as exc:
        session.transition(HUMAN, "mallory", ["alice"], 1.0, WINDOW)
    assert errcode(exc) == E.NOT_A_SERVICER
    with pytest.raises(ApiError) as exc:
        session.transition(HUMAN, None, ["alice"], 1.0, WINDOW)
    assert errcode(exc) == E.INVALID_PARAMETER
    assert session.state == UNTREATED


def test_reply_code_only_on_the_first_move_to_queue_or_human_and_end_code_on_end() -> None:
    session = Session(state=UNTREATED, last_customer_msg_at=0.0)
    assert session.transition(ASSISTANT, None, [], 1.0, WINDOW) is None
    assert session.transition(QUEUED, None, [], 1.0, WINDOW) == "reply"
    assert session.transition(HUMAN, "alice", ["alice"], 1.0, WINDOW) is None
    assert session.servicer_userid == "alice"
    assert session.transition(ENDED, None, [], 1.0, WINDOW) == "end"
    assert session.servicer_userid is None
    session.customer_wrote(2.0, WINDOW)  # a new session earns a new reply code
    assert session.transition(HUMAN, "alice", ["alice"], 3.0, WINDOW) == "reply"


def test_a_session_ends_48_hours_after_the_customer_wrote() -> None:
    session = Session()
    session.customer_wrote(0.0, WINDOW)
    session.expire(WINDOW, WINDOW)
    assert session.state == UNTREATED
    session.expire(WINDOW + 1, WINDOW)
    assert session.state == ENDED


def test_send_rules_in_order_window_state_count() -> None:
    session = Session()
    with pytest.raises(ApiError) as exc:
        session.check_send(0.0, WINDOW, 5)
    assert errcode(exc) == E.SEND_WINDOW_EXPIRED

    session.customer_wrote(0.0, WINDOW)
    for _ in range(5):
        session.check_send(1.0, WINDOW, 5)
        session.sent_by_api(1.0)
    with pytest.raises(ApiError) as exc:
        session.check_send(1.0, WINDOW, 5)
    assert errcode(exc) == E.SEND_COUNT_LIMIT

    session.customer_wrote(2.0, WINDOW)
    session.check_send(3.0, WINDOW, 5)
    session.transition(QUEUED, None, [], 3.0, WINDOW)
    with pytest.raises(ApiError) as exc:
        session.check_send(3.0, WINDOW, 5)
    assert errcode(exc) == E.STATE_FORBIDS_SENDING

    with pytest.raises(ApiError) as exc:
        session.check_send(2.0 + WINDOW + 1, WINDOW, 5)
    assert errcode(exc) == E.SEND_WINDOW_EXPIRED


def test_a_servicer_writing_in_an_ended_session_takes_it_over() -> None:
    session = Session()
    session.servicer_wrote(0.0, "alice", WINDOW)
    assert (session.state, session.servicer_userid) == (HUMAN, "alice")


def test_welcome_is_due_without_a_recent_welcome_or_message() -> None:
    session = Session()
    assert session.welcome_due(0.0, WINDOW)
    session.last_welcome_at = 0.0
    assert not session.welcome_due(WINDOW, WINDOW)
    assert session.welcome_due(WINDOW + 1, WINDOW)
    session.last_sent_at = WINDOW
    assert not session.welcome_due(WINDOW + 1, WINDOW)


# -- cursors and pages ---------------------------------------------------------------------------


def test_cursor_round_trip_and_binding_to_its_account() -> None:
    key = b"k" * 32
    cursor = encode_cursor(key, "wkA", 1234)
    assert len(cursor.encode()) <= 64
    assert decode_cursor(key, "wkA", cursor) == 1234
    for bad in (encode_cursor(key, "wkB", 1234), encode_cursor(b"x" * 32, "wkA", 1234), "garbage", "A" * 65):
        with pytest.raises(ApiError) as exc:
            decode_cursor(key, "wkA", bad)
        assert errcode(exc) == E.INVALID_PARAMETER


def entries(*specs: tuple[float, bool]) -> list[LogEntry]:
    return [
        LogEntry(i, f"m{i}", at, 3, "text", {"content": str(i)}, "wmX", via_api=api)
        for i, (at, api) in enumerate(specs)
    ]


def test_pages_skip_api_sent_and_unreadable_entries_but_count_them() -> None:
    log = entries((0, False), (10, True), (20, True), (30, False), (40, False))
    items, end, more = read_page(log, 0, 2, since=5, open_kfid="wk")
    assert (items, end, more) == ([], 2, True)  # m0 too old, m1 sent by API: an empty page, has_more
    items, end, more = read_page(log, end, 2, since=5, open_kfid="wk")
    assert ([item["msgid"] for item in items], end, more) == (["m3"], 4, True)
    items, end, more = read_page(log, end, 2, since=5, open_kfid="wk")
    assert ([item["msgid"] for item in items], end, more) == (["m4"], 5, False)
    assert read_page(log, end, 2, since=5, open_kfid="wk") == ([], 5, False)
    assert first_readable(log, 25) == 3


def test_sync_items_have_the_documented_shape() -> None:
    message = LogEntry(0, "m", 12.5, 3, "text", {"content": "hi"}, "wmX").item("wkA")
    assert message == {
        "msgid": "m",
        "open_kfid": "wkA",
        "external_userid": "wmX",
        "send_time": 12,
        "origin": 3,
        "msgtype": "text",
        "text": {"content": "hi"},
    }
    event = LogEntry(
        1, "e", 1.0, 4, "event", {"event_type": "enter_session", "open_kfid": "wkA"}, "wmX"
    ).item("wkA")
    assert "open_kfid" not in event and "external_userid" not in event
    assert event["event"]["event_type"] == "enter_session"


# -- what apps may send --------------------------------------------------------------------------


@pytest.mark.parametrize("msgid", ["a", "A-b_9", "x" * 32])
def test_good_msgids(msgid: str) -> None:
    check_msgid(msgid)


@pytest.mark.parametrize("msgid", ["", "x" * 33, "has space", "点", "a.b"])
def test_bad_msgids(msgid: str) -> None:
    with pytest.raises(ApiError):
        check_msgid(msgid)


def no_media(media_id: str) -> None:
    raise ApiError(E.INVALID_MEDIA_ID, media_id)


@pytest.mark.parametrize(
    ("msgtype", "body", "code"),
    [
        ("text", {"content": ""}, E.EMPTY_CONTENT),
        ("text", {"content": "字" * 683}, E.CONTENT_TOO_LONG),  # 2049 bytes of UTF-8
        ("image", {}, E.MISSING_MEDIA_ID),
        ("image", {"media_id": "nope"}, E.INVALID_MEDIA_ID),
        ("link", {"title": "t", "url": "https://x"}, E.MISSING_MEDIA_ID),
        ("msgmenu", {"list": [{"type": "click", "click": {"content": "x"}}] * 11}, E.MENU_TOO_MANY_ITEMS),
        ("msgmenu", {"list": [{"type": "bogus", "bogus": {}}]}, E.INVALID_MENU_ITEM),
        ("location", {"latitude": "north", "longitude": 1}, E.INVALID_PARAMETER),
        ("sticker", {}, E.INVALID_MSGTYPE),
        ("text", None, E.INVALID_PARAMETER),
    ],
)
def test_outgoing_bodies_are_checked(msgtype: str, body: object, code: int) -> None:
    with pytest.raises(ApiError) as exc:
        check_outgoing(msgtype, body, no_media)
    assert errcode(exc) == code


def test_text_of_exactly_2048_bytes_is_fine() -> None:
    check_outgoing("text", {"content": "字" * 682 + "ab"}, no_media)


# -- rate limits ---------------------------------------------------------------------------------


def test_sliding_window() -> None:
    clock = FakeClock()
    window = SlidingWindow(Rate(calls=2, seconds=10), clock)
    assert window.hit("a") and window.hit("a") and not window.hit("a")
    assert window.hit("b")
    clock.advance(9.9)
    assert not window.hit("a")  # refusals do not count...
    clock.advance(0.1)
    assert window.hit("a")  # ...so the quota is back one window after the first hit


def test_limits_need_room_in_every_window() -> None:
    clock = FakeClock()
    limits = Limits([Rate(calls=2, seconds=1), Rate(calls=3, seconds=100)], clock)
    assert limits.hit("k") and limits.hit("k") and not limits.hit("k")
    clock.advance(1)
    assert limits.hit("k") and not limits.hit("k")
    clock.advance(1)
    assert not limits.hit("k")  # the hourly-style window is full
