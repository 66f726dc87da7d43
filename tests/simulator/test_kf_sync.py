"""kf/sync_msg: cursors and paging, the callback token's 10 minutes, the token-less limit."""

from __future__ import annotations

from typing import Any

from simulator.wecom import errcodes as E
from tests.simulator.conftest import Acme, Sim

DAY = 24 * 3600


def write(sim: Sim, acme: Acme, count: int, *, start: int = 0) -> None:
    """Append customer messages directly (no callbacks: these tests pull on their own)."""
    for i in range(start, start + count):
        sim.state.wecom.kf.customer_writes(
            acme.corp, acme.account, acme.customer, "text", {"content": f"m{i}"}
        )


def token_for(sim: Sim, acme: Acme) -> str:
    return sim.state.wecom.kf.issue_msg_token(acme.corp, acme.account)


async def pull_all(sim: Sim, acme: Acme, limit: int) -> tuple[list[str], list[dict[str, Any]]]:
    token, cursor, contents, pages = token_for(sim, acme), None, [], []
    while True:
        body = {"open_kfid": acme.open_kfid, "token": token, "limit": limit, "cursor": cursor}
        page = await sim.call(acme.app, "kf/sync_msg", body)
        assert page["errcode"] == 0, page
        pages.append(page)
        contents += [item["text"]["content"] for item in page["msg_list"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            return contents, pages


async def test_paging_with_cursors_and_has_more(sim: Sim, acme: Acme) -> None:
    write(sim, acme, 7)
    contents, pages = await pull_all(sim, acme, limit=3)
    assert contents == [f"m{i}" for i in range(7)]
    assert [page["has_more"] for page in pages] == [1, 1, 0]
    assert all(len(page["next_cursor"].encode()) <= 64 for page in pages)

    write(sim, acme, 2, start=7)
    page = await sim.call(
        acme.app,
        "kf/sync_msg",
        {"open_kfid": acme.open_kfid, "token": token_for(sim, acme), "cursor": pages[-1]["next_cursor"]},
    )
    assert [item["text"]["content"] for item in page["msg_list"]] == ["m7", "m8"]
    assert page["has_more"] == 0


async def test_without_cursor_pulls_from_the_start_and_items_have_their_fields(sim: Sim, acme: Acme) -> None:
    write(sim, acme, 2)
    page = await sim.call(
        acme.app, "kf/sync_msg", {"open_kfid": acme.open_kfid, "token": token_for(sim, acme)}
    )
    first = page["msg_list"][0]
    assert first["open_kfid"] == acme.open_kfid and first["external_userid"] == acme.userid
    assert first["origin"] == 3 and first["msgtype"] == "text" and isinstance(first["send_time"], int)
    assert len({item["msgid"] for item in page["msg_list"]}) == 2


async def test_api_sent_messages_are_not_returned_and_can_make_empty_pages(sim: Sim, acme: Acme) -> None:
    write(sim, acme, 1)
    for i in range(3):
        sent = await sim.call(
            acme.app,
            "kf/send_msg",
            {
                "touser": acme.userid,
                "open_kfid": acme.open_kfid,
                "msgtype": "text",
                "text": {"content": f"r{i}"},
            },
        )
        assert sent["errcode"] == 0
    write(sim, acme, 1, start=1)
    contents, pages = await pull_all(sim, acme, limit=2)
    assert contents == ["m0", "m1"]
    assert [(len(page["msg_list"]), page["has_more"]) for page in pages] == [(1, 1), (0, 1), (1, 0)]


async def test_only_three_days_are_readable(sim: Sim, acme: Acme) -> None:
    write(sim, acme, 1)
    sim.clock.advance(2 * DAY)
    write(sim, acme, 1, start=1)
    sim.clock.advance(DAY + 1)
    contents, _ = await pull_all(sim, acme, limit=1000)
    assert contents == ["m1"]


async def test_the_callback_token_is_valid_for_ten_minutes(sim: Sim, acme: Acme) -> None:
    token = token_for(sim, acme)
    body = {"open_kfid": acme.open_kfid, "token": token}
    assert (await sim.call(acme.app, "kf/sync_msg", body))["errcode"] == 0
    sim.clock.advance(600)
    assert (await sim.call(acme.app, "kf/sync_msg", body))["errcode"] == 0
    sim.clock.advance(1)
    assert (await sim.call(acme.app, "kf/sync_msg", body))["errcode"] == E.INVALID_MSG_TOKEN


async def test_unknown_or_foreign_tokens_are_refused(sim: Sim, acme: Acme) -> None:
    other = sim.state.wecom.directory.add_account(acme.corp, "Sales")
    foreign = sim.state.wecom.kf.issue_msg_token(acme.corp, other)
    for token in ("ENCnope", foreign):
        payload = await sim.call(acme.app, "kf/sync_msg", {"open_kfid": acme.open_kfid, "token": token})
        assert payload["errcode"] == E.INVALID_MSG_TOKEN


async def test_token_less_pulls_are_strictly_limited_per_account(sim: Sim, acme: Acme) -> None:
    other = sim.state.wecom.directory.add_account(acme.corp, "Sales")
    body = {"open_kfid": acme.open_kfid}
    assert (await sim.call(acme.app, "kf/sync_msg", body))["errcode"] == 0
    assert (await sim.call(acme.app, "kf/sync_msg", body))["errcode"] == E.RATE_LIMITED
    assert (await sim.call(acme.app, "kf/sync_msg", {"open_kfid": other.open_kfid}))["errcode"] == 0
    with_token = {"open_kfid": acme.open_kfid, "token": token_for(sim, acme)}
    assert (await sim.call(acme.app, "kf/sync_msg", with_token))["errcode"] == 0
    sim.clock.advance(10)
    assert (await sim.call(acme.app, "kf/sync_msg", body))["errcode"] == 0


async def test_bad_arguments(sim: Sim, acme: Acme) -> None:
    token = token_for(sim, acme)
    cases: list[tuple[dict[str, Any], int]] = [
        ({"token": token}, E.INVALID_OPEN_KFID),
        ({"open_kfid": "wknope", "token": token}, E.OPEN_KFID_NOT_FOUND),
        ({"open_kfid": acme.open_kfid, "token": token, "limit": 1001}, E.INVALID_PARAMETER),
        ({"open_kfid": acme.open_kfid, "token": token, "limit": 0}, E.INVALID_PARAMETER),
        ({"open_kfid": acme.open_kfid, "token": token, "cursor": "x" * 65}, E.INVALID_PARAMETER),
        ({"open_kfid": acme.open_kfid, "token": token, "cursor": "forged"}, E.INVALID_PARAMETER),
        ({"open_kfid": acme.open_kfid, "token": token, "voice_format": 2}, E.INVALID_PARAMETER),
    ]
    for body, code in cases:
        assert (await sim.call(acme.app, "kf/sync_msg", body))["errcode"] == code, body


async def test_an_account_the_app_does_not_manage(sim: Sim, acme: Acme) -> None:
    unmanaged = sim.state.wecom.directory.add_account(acme.corp, "Other", managed_by=[])
    token = sim.state.wecom.kf.issue_msg_token(acme.corp, unmanaged)
    payload = await sim.call(acme.app, "kf/sync_msg", {"open_kfid": unmanaged.open_kfid, "token": token})
    assert payload["errcode"] == E.INVALID_OPEN_KFID


async def test_non_json_body(sim: Sim, acme: Acme) -> None:
    token = await sim.token(acme.app)
    response = await sim.http.post("/cgi-bin/kf/sync_msg", params={"access_token": token}, content=b"{nope")
    assert response.json()["errcode"] == E.BAD_JSON
