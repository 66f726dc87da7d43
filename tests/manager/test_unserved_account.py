"""A registration whose endpoint no longer serves the account: a puppet restarted with a config
without it answers a delivery for it ``404 account_not_served``, and the manager reads that as the
registration being stale, not as a failed delivery and not as an acknowledgement. The account waits
(offline, its mailbox kept, not probed: the probe asks the process, not the account) without a failed
attempt, a backoff or a dead letter, and flows, newest first, when a puppet registers it again.

Before, the puppet answered ``roger``/``success``: the manager marked the events delivered, nothing
pulled them, and every later event of the account went the same way."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from manager.mailbox import RAW, account_key
from manager.service import Manager
from puppets import Bot
from tests.manager.conftest import add_puppet, make_manager, running
from tests.puppets.conftest import Corp, Hosted, corp, hosted, sim, sim_config
from tests.support.recorder import Recorder
from tests.support.servers import serve_app
from tests.support.wecom_callbacks import CorpAppKeys, kf_event_xml, signed_post
from wxkf.runtime import Runtime

__all__ = ["corp", "hosted", "sim", "sim_config"]

UNREACHABLE_MANAGER = "http://127.0.0.1:9"  # the puppet has a manager configured (never answering)
GONE = "wkGONE"  # the account the puppet's config no longer lists
ANY_OUTCOME = ("delivered", "failed", "dead", "offline", "not_served")


async def serving_another_account(hosted: Callable[..., Awaitable[Hosted]]) -> Hosted:
    """A real ``wxkf puppet`` host (its callback routes on a socket) serving ``corp.kf`` only."""
    puppet = await hosted(Bot(), callback=False, manager=UNREACHABLE_MANAGER)
    await asyncio.wait_for(puppet.account.puller.caught_up.wait(), 20)
    return puppet


async def settled(manager: Manager, count: int) -> None:
    await manager.dispatcher.wait_until(lambda o: sum(o[name] for name in ANY_OUTCOME) >= count, 10)


async def assert_waiting_for_a_registration(manager: Manager, runtime: Runtime, key: str) -> None:
    outcomes = manager.dispatcher.outcomes
    assert not outcomes["delivered"] and not outcomes["failed"] and not outcomes["dead"], outcomes
    mailbox = await manager.mailboxes.get(key)
    assert mailbox is not None and mailbox.has_work and mailbox.attempts == 0, mailbox
    assert mailbox.due_at is None  # waiting for a puppet, not due at a retry time
    registration = await runtime.db["puppets"].find_one({"_id": key})
    assert registration is not None and registration["online"] is False
    assert registration["probe_at"] is None  # the process answers a probe; the account would bounce
    assert await manager.dispatcher.probe_offline() == 0


async def test_a_decrypted_delivery_answered_not_served_waits_for_a_registration_then_flows(
    runtime: Runtime,
    corp: Corp,
    hosted: Callable[..., Awaitable[Hosted]],
    puppet_server: tuple[Recorder, str],
) -> None:
    puppet = await serving_another_account(hosted)
    successor, successor_url = puppet_server
    key = account_key(corp.corpid, GONE)
    manager = make_manager(runtime)  # 3 retries 0.05 s apart: a failure would be dead soon
    async with running(manager):
        await add_puppet(manager, corp.corpid, GONE, puppet.url)  # stale: that process dropped GONE
        await manager.accept_decrypted(corp.corpid, GONE, "tok-1", "event-1")
        await settled(manager, 1)
        assert manager.dispatcher.outcomes["not_served"] == 1, manager.dispatcher.outcomes
        await assert_waiting_for_a_registration(manager, runtime, key)
        await manager.accept_decrypted(corp.corpid, GONE, "tok-2", "event-2")  # kept, not sent there
        await add_puppet(manager, corp.corpid, GONE, successor_url)  # a puppet serves it again
        await successor.wait(lambda: successor.tokens())
        assert successor.tokens() == ["tok-2"]  # the newest, once
        await manager.dispatcher.wait_until(lambda o: o["delivered"] >= 1, 10)
        assert manager.dispatcher.outcomes["not_served"] == 1
        assert not [event for event in await manager.mailboxes.events(key) if event.get("dead")]


async def test_raw_deliveries_answered_not_served_wait_whether_or_not_the_puppet_knows_the_corp(
    runtime: Runtime, corp: Corp, hosted: Callable[..., Awaitable[Hosted]]
) -> None:
    # The puppet finds the account only after decrypting, so an account of a corp it still serves is
    # told apart from one of a corp it no longer serves at all (one account per puppet, the usual
    # case: before, that was a 403 bad_signature, a permanent failure and a dead letter).
    puppet = await serving_another_account(hosted)
    keys = {
        "served corp": CorpAppKeys(corp.corpid, corp.token, corp.aes_key),
        "corp not served": CorpAppKeys.random(),
    }
    manager = make_manager(runtime)
    async with running(manager):
        for n, app in enumerate(keys.values()):
            await add_puppet(manager, app.corp_id, GONE, puppet.url)
            query, body = signed_post(app, kf_event_xml(app.corp_id, GONE, f"tok-{n}"))
            await manager.accept(
                app.corp_id, GONE, f"event-{n}", RAW, token=f"tok-{n}", body=body.decode(), query=query
            )
        await settled(manager, len(keys))
        assert manager.dispatcher.outcomes["not_served"] == len(keys), manager.dispatcher.outcomes
        for app in keys.values():
            await assert_waiting_for_a_registration(manager, runtime, account_key(app.corp_id, GONE))


async def test_a_not_served_answer_does_not_take_a_newer_registration_offline(
    runtime: Runtime, puppet_server: tuple[Recorder, str]
) -> None:
    # The stale process answers while the account registers anew elsewhere: the answer is about the
    # registration the delivery went to, and the new one must not be marked offline (with no probe to
    # bring it back, it would wait for ever).
    successor, successor_url = puppet_server
    corp_id = "wwnotserved000001"
    manager = make_manager(runtime)

    async def stale(request: Request) -> Response:
        await request.body()
        await add_puppet(manager, corp_id, GONE, successor_url)  # registered before the answer arrives
        return PlainTextResponse("account_not_served", status_code=404)

    app = Starlette(routes=[Route("/callback/decrypted", stale, methods=["POST"])])
    async with serve_app(app) as stale_url, running(manager):
        await add_puppet(manager, corp_id, GONE, stale_url)
        await manager.accept_decrypted(corp_id, GONE, "tok-1", "event-1")
        await successor.wait(lambda: successor.tokens())
        assert successor.tokens() == ["tok-1"]
        registration = await manager.puppets.fresh(account_key(corp_id, GONE))
        assert registration is not None and registration.live
        assert not manager.dispatcher.outcomes["failed"] and not manager.dispatcher.outcomes["dead"]
