"""Order by something clocks cannot reorder: managers whose wall clocks differ, or step back, still
deliver every newer callback, and what they accepted stops pinning their checkpoint."""

from __future__ import annotations

import time
from dataclasses import replace

from manager.mailbox import account_key
from tests.manager.conftest import add_puppet, make_manager, running
from wxkf.runtime import Runtime

CORP = "wwordering00000001"
KEY = account_key(CORP, "wkA")


def behind(seconds: float):  # type: ignore[no-untyped-def]
    return lambda: time.time() - seconds


async def test_a_replica_whose_clock_is_behind_delivers_a_newer_callback_after_the_lease_moves(
    runtime: Runtime, puppet_server
) -> None:
    puppet, url = puppet_server
    ahead = make_manager(runtime, owner="mgr-ahead", idle_release=0.0, housekeeping_interval=3600)
    late = make_manager(runtime, owner="mgr-late", clock=behind(5.0), idle_release=0.0)
    async with running(ahead, late):
        await add_puppet(ahead, CORP, "wkA", url)
        await ahead.accept_decrypted(CORP, "wkA", "tok-1", "event-1")
        await ahead.dispatcher.wait_until(lambda outcomes: outcomes["delivered"] >= 1, timeout=10)
        # the idle lease is released, with how far delivery got (in the ahead clock's terms)
        await ahead.dispatcher.release_idle()
        assert ahead.dispatcher.held == 0
        await late.accept_decrypted(CORP, "wkA", "tok-2", "event-2")  # later, but its clock says earlier
        await puppet.wait(lambda: puppet.tokens() == ["tok-1", "tok-2"])
        await late.dispatcher.wait_until(lambda _: len(late.undelivered) == 0, timeout=10)


async def test_a_callback_handed_over_by_a_replica_whose_clock_is_behind_is_delivered(
    runtime: Runtime, puppet_server
) -> None:
    puppet, url = puppet_server
    ahead = make_manager(runtime, owner="mgr-ahead")
    late = make_manager(runtime, owner="mgr-late", clock=behind(5.0))
    async with running(ahead, late):
        await add_puppet(ahead, CORP, "wkA", url)
        await ahead.accept_decrypted(CORP, "wkA", "tok-1", "event-1")
        await puppet.wait(lambda: puppet.tokens() == ["tok-1"])
        await ahead.dispatcher.wait_until(lambda outcomes: outcomes["delivered"] >= 1, timeout=10)
        # ahead holds the lease: late hands its callback over through the mailbox
        await late.accept_decrypted(CORP, "wkA", "tok-2", "event-2")
        await ahead.dispatcher.wait_until(lambda outcomes: outcomes["delivered"] >= 2, timeout=10)
        # a delivery that starts after tok-2 was accepted, so the puppet's pull gets its message; it
        # carries tok-1 again: by the clocks tok-2 is older, and tok-1 is still valid
        assert puppet.tokens() == ["tok-1", "tok-1"]


async def test_a_clock_stepped_back_across_a_restart_still_delivers(runtime: Runtime, puppet_server) -> None:
    puppet, url = puppet_server
    first = make_manager(runtime, owner="mgr-1")
    async with running(first):
        await add_puppet(first, CORP, "wkA", url)
        await first.accept_decrypted(CORP, "wkA", "tok-1", "event-1")
        await puppet.wait(lambda: puppet.tokens() == ["tok-1"])
    # stopped above (how far delivery got is recorded, the lease released); NTP then steps the clock back
    again = make_manager(runtime, owner="mgr-1", clock=behind(60.0))
    # not the catch-up after an outage: with the clock stepped back it may carry tok-1 for tok-2
    again.config = replace(again.config, catch_up_after_outage=False)
    async with running(again):
        await again.accept_decrypted(CORP, "wkA", "tok-2", "event-2")
        await puppet.wait(lambda: puppet.tokens() == ["tok-1", "tok-2"])
        await again.dispatcher.wait_until(lambda _: len(again.undelivered) == 0, timeout=10)


async def test_a_callback_handed_over_to_a_holder_whose_clock_is_ahead_or_behind_is_delivered(
    runtime: Runtime, puppet_server
) -> None:
    puppet, url = puppet_server
    ahead = make_manager(runtime, owner="mgr-ahead")
    late = make_manager(  # a minute behind: more than any wait in this test
        runtime, owner="mgr-late", clock=behind(60.0), idle_release=0.0, housekeeping_interval=3600
    )
    async with running(ahead, late):
        await add_puppet(late, CORP, "wkA", url)
        await late.accept_decrypted(CORP, "wkA", "tok-0", "event-0")  # late takes the lease
        await late.dispatcher.wait_until(lambda outcomes: outcomes["delivered"] >= 1, timeout=10)
        await ahead.accept_decrypted(CORP, "wkA", "tok-1", "event-1")  # handed over, due now for late too
        await late.dispatcher.wait_until(lambda outcomes: outcomes["delivered"] >= 2, timeout=10)
        await late.dispatcher.release_idle()
        await ahead.accept_decrypted(CORP, "wkA", "tok-2", "event-2")  # now ahead serves it
        await ahead.dispatcher.wait_until(lambda outcomes: outcomes["delivered"] >= 1, timeout=10)
        await late.accept_decrypted(CORP, "wkA", "tok-3", "event-3")  # handed over; its arrival is older
        # a delivery after it, with tok-2 again (its arrival is later, and it is still valid)
        await ahead.dispatcher.wait_until(lambda outcomes: outcomes["delivered"] >= 2, timeout=10)
        assert puppet.tokens() == ["tok-0", "tok-1", "tok-2", "tok-2"]
