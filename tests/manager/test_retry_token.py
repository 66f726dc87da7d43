"""A failed delivery goes on with the token it carried, even in another process: the work it leaves in
the mailbox never names an older callback than the one the puppet may already have seen."""

from __future__ import annotations

import asyncio
import time

from manager.mailbox import account_key
from manager.service import Manager
from tests.manager.conftest import add_puppet, make_manager, running
from wxkf.runtime import Runtime

CORP = "wwretrytoken000001"
KEY = account_key(CORP, "wkA")


def behind(seconds: float):  # type: ignore[no-untyped-def]
    return lambda: time.time() - seconds


async def handed_over(manager: Manager, token: str, timeout: float = 10.0) -> None:
    """Wait until the account's mailbox holds ``token`` (written by another replica: no event here)."""
    async with asyncio.timeout(timeout):
        while True:
            mailbox = await manager.mailboxes.get(KEY)
            if mailbox is not None and mailbox.latest is not None and mailbox.latest.token == token:
                return
            await asyncio.sleep(0.02)  # polling the database: the write happened in another manager


async def test_a_delivery_refused_then_retried_by_another_replica_carries_no_older_token(
    runtime: Runtime, puppet_server
) -> None:
    """The holder delivers tok-1; a replica whose clock is behind hands tok-2 over (older by the
    arrival keys), so the holder's next delivery carries tok-1 again; it is refused, and the holder
    stops. The other replica's retry must carry tok-1, not the older tok-2."""
    puppet, url = puppet_server
    # the holder sweeps only when told, and keeps its leases until it stops
    holder = make_manager(runtime, owner="mgr-holder", sweep_interval=3600, housekeeping_interval=3600)
    late = make_manager(runtime, owner="mgr-late", clock=behind(5.0))
    async with running(late):
        await holder.start()
        try:
            await add_puppet(holder, CORP, "wkA", url)
            await holder.accept_decrypted(CORP, "wkA", "tok-1", "event-1")
            await puppet.wait(lambda: puppet.tokens() == ["tok-1"])
            await holder.dispatcher.wait_until(lambda outcomes: outcomes["delivered"] >= 1, timeout=10)
            puppet.status = 503
            await late.accept_decrypted(CORP, "wkA", "tok-2", "event-2")  # the holder's lease: handed over
            await handed_over(holder, "tok-2")
            await holder.dispatcher.sweep()
            await holder.dispatcher.wait_until(lambda outcomes: outcomes["failed"] >= 1, timeout=10)
            mailbox = await holder.mailboxes.get(KEY)
            assert mailbox is not None and mailbox.latest is not None
            assert mailbox.latest.token == "tok-1", mailbox
        finally:
            puppet.status = 200
            await holder.stop()  # releases the lease; the retry falls to the other replica
        await puppet.wait(lambda: len(puppet.tokens()) >= 2, timeout=20)
    assert puppet.tokens() == ["tok-1", "tok-1"]
