"""Dispatch: coalescing, order, backoff and dead letters, offline parking, leases across managers."""

from __future__ import annotations

import asyncio
import json

import httpx
from starlette.applications import Starlette

from manager.admin import ReplayIn, admin_routes, replay
from manager.mailbox import account_key
from tests.manager.conftest import PUPPET_SECRET, add_puppet, make_manager
from tests.support.recorder import Recorder
from wxkf import webhooks
from wxkf.runtime import Runtime

CORP = "wwdispatch0000001"


async def test_backlog_for_an_unregistered_account_becomes_one_delivery(
    runtime: Runtime, puppet_server
) -> None:
    puppet, url = puppet_server
    manager = make_manager(runtime)
    await manager.start()
    try:
        for n in range(200):
            await manager.accept_decrypted(CORP, "wkA", f"tok-{n:03d}", None)
        mailbox = await manager.mailboxes.get(account_key(CORP, "wkA"))
        assert mailbox is not None and mailbox.has_work and mailbox.due_at is None  # parked: unroutable
        await add_puppet(manager, CORP, "wkA", url)
        await puppet.wait(lambda: len(puppet.received) >= 1)
        assert puppet.tokens() == ["tok-199"]  # the newest token pulls everything
        assert len(await manager.mailboxes.events(account_key(CORP, "wkA"))) == 200
    finally:
        await manager.stop()


async def test_deliveries_are_signed_with_the_puppets_secret(runtime: Runtime, puppet_server) -> None:
    puppet, url = puppet_server
    manager = make_manager(runtime)
    await manager.start()
    try:
        await add_puppet(manager, CORP, "wkA", url)
        await manager.accept_decrypted(CORP, "wkA", "tok-1", "event-1")
        await puppet.wait(lambda: len(puppet.received) >= 1)
        delivery = puppet.received[0]
        assert json.loads(delivery["body"]) == {"token": "tok-1", "openKfId": "wkA"}
        webhooks.verify(PUPPET_SECRET, delivery["headers"], delivery["body"])
        assert delivery["headers"]["webhook-id"] == "event-1"
    finally:
        await manager.stop()


async def test_a_stream_reaches_the_puppet_newest_last_one_at_a_time(runtime: Runtime, puppet_server) -> None:
    puppet, url = puppet_server
    manager = make_manager(runtime)
    await manager.start()
    try:
        await add_puppet(manager, CORP, "wkA", url)
        for n in range(50):
            await manager.accept_decrypted(CORP, "wkA", f"tok-{n:02d}", None)
        await puppet.wait(lambda: puppet.tokens() and puppet.tokens()[-1] == "tok-49")
        tokens = puppet.tokens()
        assert tokens == sorted(tokens)  # never an older token after a newer one
        assert puppet.max_in_flight == 1
    finally:
        await manager.stop()


async def test_failing_puppet_backs_off_dead_letters_and_replay_delivers(
    runtime: Runtime, puppet_server
) -> None:
    puppet, url = puppet_server
    puppet.status = 500
    manager = make_manager(runtime)
    await manager.start()
    try:
        await add_puppet(manager, CORP, "wkA", url)
        await manager.accept_decrypted(CORP, "wkA", "tok-dead", "event-dead")
        await puppet.wait(lambda: puppet.attempts >= 4)  # first try + 3 retries, then dead-lettered
        key = account_key(CORP, "wkA")
        await manager.dispatcher.wait_until(lambda outcomes: outcomes["dead"] >= 1, timeout=10)
        event = await manager.mailboxes.event("event-dead")
        assert event is not None and event["dead"] is True
        mailbox = await manager.mailboxes.get(key)
        assert mailbox is not None and not mailbox.has_work
        puppet.status = 200
        result = await replay(manager, ReplayIn(event_id="event-dead"))
        assert result["delivering"] == "event-dead"
        await puppet.wait(lambda: puppet.tokens() == ["tok-dead"])
    finally:
        await manager.stop()


async def test_unreachable_puppet_waits_and_gets_one_delivery_of_the_newest_when_back(
    runtime: Runtime,
) -> None:
    from tests.support.servers import serve_app

    puppet = Recorder()
    manager = make_manager(runtime)
    await manager.start()
    try:
        await add_puppet(manager, CORP, "wkA", "http://127.0.0.1:9")  # nothing listens there
        await manager.accept_decrypted(CORP, "wkA", "tok-1", None)
        key = account_key(CORP, "wkA")
        await manager.dispatcher.wait_until(lambda outcomes: outcomes["offline"] >= 1, timeout=10)
        puppet_record = await manager.puppets.get(key)
        assert puppet_record is not None and not puppet_record.online
        await manager.accept_decrypted(CORP, "wkA", "tok-2", None)  # waits in the mailbox
        mailbox = await manager.mailboxes.get(key)
        assert mailbox is not None and mailbox.has_work and mailbox.due_at is None
        async with serve_app(puppet.app()) as url:
            await add_puppet(manager, CORP, "wkA", url)  # re-registration: flows at once
            await puppet.wait(lambda: "tok-2" in puppet.tokens())
            assert puppet.tokens() == ["tok-2"]  # the newest pulls everything: one delivery is enough
    finally:
        await manager.stop()


async def test_two_managers_serve_each_account_one_at_a_time(runtime: Runtime, puppet_server) -> None:
    puppet, url = puppet_server
    first = make_manager(runtime, owner="mgr-a")
    second = make_manager(runtime, owner="mgr-b")
    await first.start()
    await second.start()
    try:
        for kf in range(10):
            await add_puppet(first, CORP, f"wk{kf}", url)
        puppet.gate = asyncio.Event()
        for n in range(5):
            for kf in range(10):
                manager = first if (n + kf) % 2 else second
                await manager.accept_decrypted(CORP, f"wk{kf}", f"tok-{kf}-{n}", None)
        puppet.gate.set()
        await puppet.wait(
            lambda: {t for t in puppet.tokens() if t.endswith("-4")} == {f"tok-{k}-4" for k in range(10)}
        )
        per_account: dict[str, list[str]] = {}
        for token in puppet.tokens():
            per_account.setdefault(token.split("-")[1], []).append(token)
        for tokens in per_account.values():
            assert tokens == sorted(tokens)
        assert puppet.max_in_flight == 1
    finally:
        await first.stop()
        await second.stop()


async def test_delivery_progress_is_written_lazily_but_the_admin_view_is_current(
    runtime: Runtime, puppet_server
) -> None:
    puppet, url = puppet_server
    manager = make_manager(runtime, delivery_marks_per_sweep=0)  # the sweep writes no delivery marks
    await manager.start()
    key = account_key(CORP, "wkA")
    try:
        await add_puppet(manager, CORP, "wkA", url)
        await manager.accept_decrypted(CORP, "wkA", "tok-1", "event-1")
        await manager.dispatcher.wait_until(lambda outcomes: outcomes["delivered"] >= 1, timeout=10)
        assert puppet.tokens() == ["tok-1"]
        mailbox = await manager.mailboxes.get(key)
        assert mailbox is not None and mailbox.delivered == ""  # a delivery writes nothing
        app = Starlette(routes=admin_routes(manager, "admin-token"))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://hub") as http:
            response = await http.get(
                f"/admin/accounts/{CORP}/wkA/events", headers={"authorization": "Bearer admin-token"}
            )
        assert [(e["id"], e["state"]) for e in response.json()["events"]] == [("event-1", "delivered")]
    finally:
        await manager.stop()
    mailbox = await manager.mailboxes.get(key)
    assert mailbox is not None and mailbox.delivered.endswith("-event-1")  # written on stop
