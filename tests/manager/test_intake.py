"""Intake: once an event is written, something delivers it, however the callback that brought it ends."""

from __future__ import annotations

import asyncio
from typing import Any

from manager.mailbox import account_key
from tests.manager.conftest import add_puppet, make_manager, running
from wxkf.runtime import Runtime

CORP = "wwintake0000000001"
KEY = account_key(CORP, "wkA")


async def test_an_event_accepted_on_a_stale_no_puppet_answer_is_delivered_without_another_callback(
    runtime: Runtime, puppet_server
) -> None:
    puppet, url = puppet_server
    stale = make_manager(runtime, owner="mgr-stale")
    other = make_manager(runtime, owner="mgr-other")
    async with running(stale, other):
        await stale.accept_decrypted(CORP, "wkA", "tok-0", "event-0")  # no puppet yet (and now cached)
        await add_puppet(other, CORP, "wkA", url)  # the puppet registers through the other replica
        await puppet.wait(lambda: puppet.tokens() == ["tok-0"])
        await other.dispatcher.wait_until(lambda outcomes: outcomes["delivered"] >= 1, timeout=10)
        await stale.accept_decrypted(CORP, "wkA", "tok-1", "event-1")  # its cache still says "no puppet"
        await puppet.wait(lambda: puppet.tokens() == ["tok-0", "tok-1"], timeout=5)  # the cache lives 10 s


async def test_a_cancelled_intake_whose_write_went_through_is_still_delivered(
    runtime: Runtime, puppet_server
) -> None:
    puppet, url = puppet_server
    manager = make_manager(runtime)
    async with running(manager):
        await add_puppet(manager, CORP, "wkA", url)
        await manager.accept_decrypted(CORP, "wkA", "tok-0", "event-0")
        await puppet.wait(lambda: puppet.tokens() == ["tok-0"])
        log = manager.mailboxes.log
        issued = asyncio.Event()

        async def write_then_wait(*args: Any) -> bool:
            """As group commit does: the write goes on even if the caller is cancelled meanwhile."""
            write = asyncio.ensure_future(log(*args))
            issued.set()
            return await asyncio.shield(write)

        manager.mailboxes.log = write_then_wait  # type: ignore[method-assign]
        intake = asyncio.create_task(manager.accept_decrypted(CORP, "wkA", "tok-1", "event-1"))
        await issued.wait()
        intake.cancel()  # the gateway's request was cut off: WeCom saw no answer and will retry
        await asyncio.gather(intake, return_exceptions=True)
        manager.mailboxes.log = log  # type: ignore[method-assign]
        assert not await manager.accept_decrypted(CORP, "wkA", "tok-1", "event-1")  # the retry: a duplicate
        await puppet.wait(lambda: puppet.tokens() == ["tok-0", "tok-1"])
