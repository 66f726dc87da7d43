"""A manager that starts with no other manager replica alive (the hub was down: WeCom may have given up
on callbacks meanwhile) gives each account its newest callback once more, if that callback's sync
token is still valid, so that a puppet which ignores ``upPeriod`` (the Node puppet) pulls and finds
what arrived during the outage. A replica restarted beside a live one does not."""

from __future__ import annotations

import time

from manager.mailbox import account_key
from manager.service import Manager
from tests.manager.conftest import add_puppet, make_manager, running
from tests.support.recorder import Recorder
from wxkf.runtime import Runtime

CORP = "wwcatchup00000001"
MINUTE = 60.0


async def test_after_an_outage_each_account_gets_its_newest_callback_again_while_its_token_lives(
    runtime: Runtime, puppet_server: tuple[Recorder, str]
) -> None:
    puppet, url = puppet_server
    # wkOLD's last callback came 20 minutes ago (its token long expired), through a life whose clock
    # said so; wkRECENT's three minutes ago
    behind = make_manager(runtime, clock=lambda: time.time() - 20 * MINUTE)
    async with running(behind):
        for kf in ("wkRECENT", "wkOLD", "wkQUIET"):
            await add_puppet(behind, CORP, kf, url)
        await behind.accept_decrypted(CORP, "wkOLD", "tok-old", "event-old")
        await puppet.wait(lambda: puppet.tokens() == ["tok-old"])
    before = make_manager(runtime, clock=lambda: time.time() - 3 * MINUTE)
    async with running(before):
        await before.accept_decrypted(CORP, "wkRECENT", "tok-recent-1", "event-recent-1")
        await before.accept_decrypted(CORP, "wkRECENT", "tok-recent-2", "event-recent-2")
        await puppet.wait(lambda: "tok-recent-2" in puppet.tokens())
    assert "tok-old" not in puppet.tokens()[1:]  # its token had expired at that start already
    delivered = len(puppet.received)
    # the hub was down (no replica alive); it starts again
    after = make_manager(runtime)
    async with running(after):
        await puppet.wait(lambda: "tok-recent-2" in puppet.tokens()[delivered:])  # the newest, again
        await after.dispatcher.wait_until(lambda o: o["delivered"] >= 1, 10)
        again = puppet.tokens()[delivered:]
        # nothing for wkOLD or wkQUIET. (On a loaded machine the restart can first redeliver the
        # mailbox's own older token, tok-recent-1, at least once as ever, when its delivery was not
        # yet marked at the stop.)
        assert set(again) <= {"tok-recent-1", "tok-recent-2"}, again
        mailbox = await after.mailboxes.get(account_key(CORP, "wkOLD"))
        assert mailbox is None or not mailbox.has_work


async def test_a_replica_restarted_beside_a_live_one_sends_no_catch_up(
    runtime: Runtime, puppet_server: tuple[Recorder, str]
) -> None:
    puppet, url = puppet_server
    first, other = make_manager(runtime), make_manager(runtime, "mgr-2")
    async with running(other):
        async with running(first):
            await add_puppet(first, CORP, "wkRECENT", url)
            await first.accept_decrypted(CORP, "wkRECENT", "tok-1", "event-1")
            await puppet.wait(lambda: puppet.tokens() == ["tok-1"])
        restarted = make_manager(runtime)
        async with running(restarted):
            assert not _catching_up(restarted)  # mgr-2 took WeCom's callbacks meanwhile
            await restarted.accept_decrypted(CORP, "wkRECENT", "tok-2", "event-2")
            await puppet.wait(lambda: puppet.tokens()[-1:] == ["tok-2"])
    assert puppet.tokens() == ["tok-1", "tok-2"]


def _catching_up(manager: Manager) -> bool:
    return any(task.get_name() == "manager:catch-up" for task in manager._tasks)
