"""The account runtime in this process against the simulator: failures, ordering, sends once, the store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import httpx
import pytest
from pymongo.errors import PyMongoError

from puppets import (
    Bot,
    Click,
    EnterSession,
    Incoming,
    Menu,
    MenuClick,
    MsgSendFail,
    SendCountLimit,
    TextMessage,
)
from puppets.account import AccountSpec
from puppets.config import PuppetConfig
from puppets.host import PuppetHost
from puppets.sending import derive_msgid
from puppets.store import DONE, FAILED, NOT_DELIVERED, SENT, Pending
from simulator.state import SimState
from tests.puppets.conftest import Corp, Hosted, wait_until
from wecom.client import KfAccount, WeComClient
from wxkf.database import Database

Host = Callable[..., Awaitable[Hosted]]


async def test_a_failing_handler_is_logged_with_its_msgid_marked_failed_and_the_account_goes_on(
    corp: Corp, hosted: Host, caplog: pytest.LogCaptureFixture
) -> None:
    bot = Bot()

    @bot.on_text
    async def answer(message: TextMessage) -> None:
        if message.text == "boom":
            raise RuntimeError("the bot broke")
        await message.reply(f"ok: {message.text}")

    puppet = await hosted(bot)
    await corp.says("boom", wait=True)
    await corp.says("after", wait=True)
    assert await corp.wait_received(1) == ["ok: after"]
    store, key = puppet.host.store, puppet.account.key
    states = {doc["item"]["text"]["content"]: doc async for doc in store.messages.find({"account": key})}
    assert states["boom"]["state"] == FAILED and "the bot broke" in states["boom"]["error"]
    await wait_until(lambda: _state(puppet, states["after"]["item"]["msgid"], DONE), what="done")
    failed_msgid = states["boom"]["item"]["msgid"]
    assert any(
        failed_msgid in record.getMessage() for record in caplog.records if record.levelname == "ERROR"
    )


async def _state(puppet: Hosted, msgid: str, state: str) -> bool:
    doc = await puppet.host.store.message(puppet.account.key, msgid)
    return doc is not None and doc["state"] == state


async def test_a_handler_run_again_after_a_crash_never_makes_the_customer_receive_twice(
    corp: Corp, hosted: Host
) -> None:
    bot = Bot()
    runs: list[tuple[bool, list[bool]]] = []

    @bot.on_text
    async def answer(message: TextMessage) -> None:
        first = await message.reply("one")
        second = await message.reply("two")
        runs.append((message.redelivery, [first.already_sent, second.already_sent]))

    puppet = await hosted(bot)
    await corp.says("hello", wait=True)
    assert await corp.wait_received(2) == ["one", "two"]
    account = puppet.account
    item = (await account.store.messages.find_one({"account": account.key}))["item"]  # type: ignore[index]
    # a re-run after a crash: both sends are in the store, so WeCom is not even asked
    await account._handle(Pending(item, redelivery=True))
    # a crash after WeCom accepted the second send but before it was recorded: WeCom refuses the msgid
    await account.store.sends.delete_one(
        {"_id": f"{account.key}/{derive_msgid(account.key, item['msgid'], 1)}"}
    )
    await account._handle(Pending(item, redelivery=True))
    assert runs == [(False, [False, False]), (True, [True, True]), (True, [True, True])]
    assert await corp.received() == ["one", "two"]
    sends = [doc async for doc in account.store.sends.find({"account": account.key})]
    assert len(sends) == 2 and all(doc["state"] == SENT for doc in sends)


async def test_one_customers_slow_handler_delays_no_one_else_and_each_customer_stays_in_order(
    corp: Corp, hosted: Host
) -> None:
    bot = Bot()
    release = asyncio.Event()
    seen: list[tuple[str, str]] = []

    @bot.on_text
    async def answer(message: TextMessage) -> None:
        if message.text == "slow":
            await release.wait()
        seen.append((message.customer, message.text))
        await message.reply(f"echo: {message.text}")

    await hosted(bot)
    await corp.says("slow", "wmBOB", wait=True)
    await corp.says("after slow", "wmBOB", wait=True)
    await corp.says("quick", "wmCAROL", wait=True)
    assert await corp.wait_received(1, "wmCAROL") == ["echo: quick"]
    assert seen == [("wmCAROL", "quick")]  # Bob's second message waits behind his first
    release.set()
    assert await corp.wait_received(2, "wmBOB") == ["echo: slow", "echo: after slow"]


async def test_the_send_limit_surfaces_as_a_typed_exception(corp: Corp, hosted: Host) -> None:
    bot = Bot()
    outcome: list[str] = []

    @bot.on_text
    async def chatty(message: TextMessage) -> None:
        try:
            for n in range(6):
                await message.reply(f"reply {n}")
        except SendCountLimit as exc:
            outcome.append(f"limit after {n} ({exc.errcode})")

    await hosted(bot)
    await corp.says("talk to me", wait=True)
    assert len(await corp.wait_received(5)) == 5
    await wait_until(lambda: _true(outcome), what="the handler to finish")
    assert outcome == ["limit after 5 (95001)"]


async def _true(value: object) -> bool:
    return bool(value)


async def test_welcome_menu_and_click_and_msg_send_fail_update_the_conversation(
    corp: Corp, hosted: Host
) -> None:
    bot = Bot()
    failures: list[str] = []

    @bot.on_enter_session
    async def welcome(event: EnterSession) -> None:
        await event.reply(Menu("How can we help?", [Click("orders", "My orders"), Click("human", "A human")]))

    @bot.on_menu_click
    async def chosen(click: MenuClick) -> None:
        await click.reply(f"you chose {click.menu_id}")

    @bot.on_msg_send_fail
    async def failed(event: MsgSendFail) -> None:
        failures.append(event.fail_msgid)

    puppet = await hosted(bot)
    entered = await corp.http.post(
        corp.control(f"/accounts/{corp.kf}/events"),
        json={"event_type": "enter_session", "external_userid": "wmCAROL", "welcome": True},
    )
    assert entered.is_success, entered.text

    async def menu_received() -> list[dict[str, object]]:
        response = await corp.http.get(corp.control("/customers/wmCAROL/received"))
        return [m for m in response.json()["messages"] if m["msgtype"] == "msgmenu"]

    [menu] = await wait_until(menu_received, what="the welcome menu")
    clicked = await corp.http.post(
        corp.control(f"/accounts/{corp.kf}/messages"),
        json={
            "external_userid": "wmCAROL",
            "msgtype": "text",
            "text": {"content": "My orders", "menu_id": "orders"},
        },
    )
    assert clicked.is_success
    assert await corp.wait_received(1, "wmCAROL") == ["you chose orders"]
    reported = await corp.http.post(
        corp.control(f"/accounts/{corp.kf}/events"),
        json={
            "event_type": "msg_send_fail",
            "external_userid": "wmCAROL",
            "fail_msgid": menu["msgid"],
            "fail_type": 4,
        },
    )
    assert reported.is_success
    await wait_until(lambda: _true(failures), what="msg_send_fail")
    assert failures == [menu["msgid"]]
    conversation = await bot.conversation("wmCAROL")
    directions = [(entry["direction"], entry["msgtype"]) for entry in conversation]
    assert directions == [
        ("in", "event"),
        ("out", "msgmenu"),
        ("in", "text"),
        ("out", "text"),
        ("in", "event"),
    ]
    assert conversation[1]["state"] == NOT_DELIVERED and conversation[3]["state"] == SENT
    assert puppet.account.handled == 3


async def test_messages_are_recorded_before_the_cursor_and_a_lost_cursor_duplicates_nothing(
    corp: Corp, hosted: Host, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    bot = Bot()
    handled: list[str] = []

    @bot.on_text
    async def note(message: TextMessage) -> None:
        handled.append(message.text)

    puppet = await hosted(bot)
    for text in ("a", "b", "c"):
        await corp.says(text, wait=True)
    await wait_until(lambda: _true(len(handled) == 3), what="three handled")
    account = puppet.account
    await account.store.accounts.delete_one({"_id": account.key})  # as if the cursor write was lost
    account.puller._cursor = None
    account.puller.catch_up()  # re-reads the whole log from the start
    await corp.says("d", wait=True)
    await wait_until(lambda: _true(len(handled) == 4), what="four handled")
    await asyncio.wait_for(account.puller.caught_up.wait(), 10)
    assert handled == ["a", "b", "c", "d"]
    assert await account.store.messages.count_documents({"account": account.key}) == 4


async def test_the_welcome_menu_example_greets_answers_a_choice_and_hands_over(
    corp: Corp, hosted: Host
) -> None:
    from examples.welcome_menu import ANSWERS, bot

    puppet = await hosted(bot)
    entered = await corp.http.post(
        corp.control(f"/accounts/{corp.kf}/events"),
        json={"event_type": "enter_session", "external_userid": "wmCAROL", "welcome": True},
    )
    assert entered.is_success

    async def received_types() -> list[str]:
        response = await corp.http.get(corp.control("/customers/wmCAROL/received"))
        return [m["msgtype"] for m in response.json()["messages"]]

    await wait_until(received_types, what="the welcome menu")
    for menu_id in ("hours", "human"):
        await corp.http.post(
            corp.control(f"/accounts/{corp.kf}/messages"),
            json={
                "external_userid": "wmCAROL",
                "msgtype": "text",
                "text": {"content": "x", "menu_id": menu_id},
            },
        )
    assert await corp.wait_received(2, "wmCAROL") == [ANSWERS["hours"], ANSWERS["human"]]
    assert await received_types() == ["msgmenu", "text", "text"]

    async def in_pool() -> bool:
        state, _ = await puppet.account.service_state("wmCAROL")
        return state == 2

    await wait_until(in_pool, what="the session to move to the waiting pool")


async def test_database_failures_delay_pulling_and_handling_but_lose_and_repeat_nothing(
    corp: Corp, hosted: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = Bot()
    handled: list[str] = []

    @bot.on_text
    async def note(message: TextMessage) -> None:
        handled.append(message.text)

    puppet = await hosted(bot)
    await asyncio.wait_for(puppet.account.puller.caught_up.wait(), 10)
    store = puppet.host.store
    failing = {"record": 1, "mark_handling": 2}
    for name in failing:
        real = getattr(store, name)

        def flaky(*args: object, _real: object = real, _name: str = name) -> object:
            if failing[_name] > 0:
                failing[_name] -= 1
                raise PyMongoError(f"{_name}: the database is away")
            return _real(*args)  # type: ignore[operator]

        monkeypatch.setattr(store, name, flaky)
    await corp.says("despite it all", wait=True)
    await wait_until(lambda: _true(handled), what="the message")
    assert handled == ["despite it all"] and failing == {"record": 0, "mark_handling": 0}
    doc = await store.messages.find_one({"account": puppet.account.key})
    assert doc is not None
    await wait_until(lambda: _state(puppet, doc["item"]["msgid"], DONE), what="done")


async def test_every_receive_type_reaches_the_bot_typed_and_unknown_ones_raw(
    corp: Corp, hosted: Host
) -> None:
    bot = Bot()
    seen: list[str] = []

    @bot.on(Incoming)
    async def note(item: Incoming) -> None:
        seen.append(type(item).__name__)

    await hosted(bot)
    bodies = {
        "text": {"content": "hi"},
        "image": {},
        "voice": {},
        "video": {},
        "file": {},
        "location": {"latitude": 23.1, "longitude": 113.3, "name": "Tower", "address": "GZ"},
        "link": {
            "title": "T",
            "desc": "D",
            "url": "https://example.com",
            "pic_url": "https://example.com/p.png",
        },
        "business_card": {"userid": "zhangsan"},
        "miniprogram": {"appid": "wx1", "title": "T", "thumb_media_id": "m", "pagepath": "p"},
        "channels_shop_product": {"product_id": "p1"},
        "channels_shop_order": {"order_id": "o1"},
        "merged_msg": {"title": "chat", "item": []},
        "hologram": {"beam": 1},
    }
    for msgtype, body in bodies.items():
        response = await corp.http.post(
            corp.control(f"/accounts/{corp.kf}/messages"),
            json={"external_userid": corp.customer, "msgtype": msgtype, msgtype: body},
        )
        assert response.is_success, (msgtype, response.text)
    await wait_until(lambda: _true(len(seen) >= len(bodies)), what="every message")
    assert seen == [
        "TextMessage",
        "ImageMessage",
        "VoiceMessage",
        "VideoMessage",
        "FileMessage",
        "LocationMessage",
        "LinkMessage",
        "BusinessCardMessage",
        "MiniprogramMessage",
        "ChannelsShopProductMessage",
        "ChannelsShopOrderMessage",
        "MergedMessage",
        "RawMessage",
    ]


async def test_a_puppet_down_longer_than_the_node_cutoff_still_answers_everything(
    corp: Corp, hosted: Host, sim: tuple[str, SimState]
) -> None:
    """Messages written 10 simulated minutes before the puppet starts are answered (the Node puppet
    drops anything older than 5 minutes)."""
    for text in ("early", "still early"):
        await corp.says(text)
    sim[1].clock.advance(600)  # type: ignore[attr-defined]
    bot = Bot()

    @bot.on_text
    async def echo(message: TextMessage) -> None:
        await message.reply(f"echo: {message.text}")

    await hosted(bot)
    assert await corp.wait_received(2) == ["echo: early", "echo: still early"]


async def test_finished_records_are_purged_after_the_retention_and_unfinished_ones_never(
    corp: Corp, hosted: Host
) -> None:
    bot = Bot()
    release = asyncio.Event()

    @bot.on_text
    async def answer(message: TextMessage) -> None:
        if message.text == "stuck":
            await release.wait()
        await message.reply("ok")

    puppet = await hosted(bot, retention_days=4)
    await corp.says("done soon", wait=True)
    await corp.wait_received(1)
    await corp.says("stuck", wait=True)
    store = puppet.host.store
    await wait_until(lambda: _count(store, 2), what="two recorded")
    now = store._clock()
    store._clock = lambda: now + 5 * 86400  # type: ignore[method-assign]
    assert await store.purge() == 3  # the finished message, its end entry and its reply
    assert await store.messages.count_documents({}) == 1  # the unfinished one stays
    release.set()


async def _count(store: object, n: int) -> bool:
    return await store.messages.count_documents({}) >= n  # type: ignore[attr-defined,no-any-return]


async def test_a_handler_that_hangs_is_cancelled_marked_failed_and_its_customer_goes_on(
    corp: Corp, hosted: Host
) -> None:
    bot = Bot()

    @bot.on_text
    async def answer(message: TextMessage) -> None:
        if message.text == "hang":
            await asyncio.Event().wait()  # never set
        await message.reply(f"ok: {message.text}")

    puppet = await hosted(bot, handler_timeout=0.5)
    await corp.says("hang", wait=True)
    await corp.says("next", wait=True)
    assert await corp.wait_received(1) == ["ok: next"]
    hung = await puppet.host.store.messages.find_one({"item.text.content": "hang"})
    assert hung is not None and hung["state"] == FAILED and hung["error"] == "timed out after 0.5 s"


async def test_accounts_of_one_app_are_resolved_with_one_listing(
    corp: Corp, db: Database, sim: tuple[str, SimState], monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(5):
        added = await corp.http.post(
            corp.control("/accounts"), json={"open_kfid": f"wkEXTRA{n}", "name": f"E{n}"}
        )
        assert added.is_success
    listings = 0
    real = WeComClient.kf_accounts_all

    async def counted(self: WeComClient, page_size: int = 100) -> list[KfAccount]:
        nonlocal listings
        listings += 1
        return await real(self, page_size)

    monkeypatch.setattr(WeComClient, "kf_accounts_all", counted)
    specs = [
        AccountSpec(corp.corpid, corp.secret, corp.token, corp.aes_key, open_kfid=kf)
        for kf in [corp.kf, *(f"wkEXTRA{n}" for n in range(5))]
    ]
    async with httpx.AsyncClient() as http:
        host = PuppetHost(PuppetConfig(accounts=specs), Bot(), db, http, sim[0] + "/cgi-bin")
        await host.prepare()
    assert len(host.accounts) == 6 and listings == 1
