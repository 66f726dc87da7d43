"""Leases are fenced: a released, lost or taken-over lease never has a delivery running under it."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from typing import Any

from manager.account_state import State
from manager.mailbox import account_key
from manager.recovery import FENCE
from tests.manager.conftest import add_puppet, make_manager, running
from tests.manager.test_recovery import replica
from tests.support.clock import FakeClock
from wxkf.database import Database
from wxkf.runtime import Runtime

CORP = "wwfencing000000001"
KEY = account_key(CORP, "wkA")


def signal_deliveries(manager: Any) -> asyncio.Event:
    """An event set when ``manager`` starts a delivery."""
    started = asyncio.Event()
    deliver = manager.dispatcher._deliver

    async def signalled(*args: Any) -> None:
        started.set()
        await deliver(*args)

    manager.dispatcher._deliver = signalled
    return started


async def test_a_delivery_that_starts_while_an_idle_lease_is_released_keeps_the_lease(
    runtime: Runtime, puppet_server
) -> None:
    puppet, url = puppet_server
    manager = make_manager(runtime, idle_release=0.0, housekeeping_interval=3600)
    async with running(manager):
        await add_puppet(manager, CORP, "wkA", url)
        await manager.accept_decrypted(CORP, "wkA", "tok-1", "event-1")
        await manager.dispatcher.wait_until(lambda outcomes: outcomes["delivered"] >= 1, timeout=10)
        release = manager.mailboxes.release
        entered, proceed = asyncio.Event(), asyncio.Event()

        async def held_back(*args: Any, **kwargs: Any) -> None:
            entered.set()
            await proceed.wait()
            await release(*args, **kwargs)

        manager.mailboxes.release = held_back  # type: ignore[method-assign]
        housekeeping = asyncio.create_task(manager.dispatcher.release_idle())  # the account is idle
        await entered.wait()
        puppet.gate = asyncio.Event()
        started = signal_deliveries(manager)
        await manager.accept_decrypted(CORP, "wkA", "tok-2", "event-2")  # while the release is under way
        await started.wait()
        proceed.set()
        await housekeeping
        mailbox = await manager.mailboxes.get(KEY)
        assert mailbox is not None and mailbox.lease_owner == "mgr-1" and mailbox.lease_until == math.inf
        puppet.gate.set()
        await puppet.wait(lambda: puppet.tokens() == ["tok-1", "tok-2"])


async def test_losing_every_lease_stops_the_deliveries_in_flight(runtime: Runtime, puppet_server) -> None:
    puppet, url = puppet_server
    manager = make_manager(runtime)
    async with running(manager):
        await add_puppet(manager, CORP, "wkA", url)
        puppet.gate = asyncio.Event()
        started = signal_deliveries(manager)
        await manager.accept_decrypted(CORP, "wkA", "tok-1", "event-1")
        await started.wait()
        await manager.dispatcher.lost_all_leases()
        assert all(task.done() for task in manager.dispatcher._tasks)
        puppet.gate.set()
        # what it had not delivered went to the mailbox, and is delivered under a new lease
        await puppet.wait(lambda: "tok-1" in puppet.tokens())


async def test_a_restart_during_a_takeover_keeps_its_fresh_leases(db: Database) -> None:
    clock = FakeClock()
    boxes, _, restarted = await replica(db, "mgr-r", clock)
    await restarted.recover_own()
    assert await boxes.lease(KEY, "mgr-r", restarted.liveness.life) is not None
    # mgr-r dies; mgr-t watches it go silent
    taker_boxes, _, taker = await replica(db, "mgr-t", clock)
    await taker.recover_own()
    await taker.take_over_dead()
    clock.advance(31)
    await taker.checkpoint()
    undelivered_by = taker_boxes.undelivered_by
    again: list[Any] = []

    async def restart_meanwhile(replica_id: str, since: str) -> Any:
        """mgr-r starts again (same replica id) between the taker's claim and the end of its takeover."""
        boxes, _, recovery = await replica(db, "mgr-r", clock)
        await recovery.recover_own()
        assert await boxes.lease(KEY, "mgr-r", recovery.liveness.life) is not None
        again.append(recovery)
        return await undelivered_by(replica_id, since)

    taker_boxes.undelivered_by = restart_meanwhile  # type: ignore[method-assign]
    await taker.take_over_dead()
    assert again, "the takeover happened"
    assert await again[0].checkpoint()  # the restarted replica is alive, and says so
    mailbox = await taker_boxes.get(KEY)
    assert mailbox is not None and mailbox.lease_owner == "mgr-r" and mailbox.lease_until == math.inf
    assert await taker_boxes.lease(KEY, "mgr-t", taker.liveness.life) is None  # nobody else serves it


async def test_a_replica_whose_clock_is_behind_is_not_taken_over_while_it_checkpoints(db: Database) -> None:
    live_clock, late_clock = FakeClock(), FakeClock(FakeClock().now - 40)
    _, _, late = await replica(db, "mgr-late", late_clock)
    _, _, live = await replica(db, "mgr-live", live_clock)
    await late.recover_own()
    await live.recover_own()
    for _ in range(40):
        assert await live.take_over_dead() == 0
        live_clock.advance(1)
        late_clock.advance(1)
        assert await late.checkpoint()


async def test_a_replica_whose_last_checkpoint_is_too_old_starts_no_delivery(
    runtime: Runtime, puppet_server
) -> None:
    puppet, url = puppet_server
    monotonic = FakeClock(1000.0)
    manager = make_manager(runtime, monotonic=monotonic)
    async with running(manager):
        for task in manager._tasks:  # no checkpoints but the ones this test makes
            task.cancel()
        await add_puppet(manager, CORP, "wkA", url)
        monotonic.advance(0.75 * manager.config.replica_timeout)  # e.g. paused (SIGSTOP), then woken
        await manager.accept_decrypted(CORP, "wkA", "tok-1", "event-1")
        await manager.dispatcher.sweep()
        await asyncio.gather(*manager.dispatcher._tasks)
        assert manager.dispatcher.state_of(KEY) is State.PENDING and puppet.tokens() == []
        assert await manager.recovery.checkpoint()  # not taken over after all: the fence is renewed
        await manager.dispatcher.sweep()
        await puppet.wait(lambda: puppet.tokens() == ["tok-1"])


def test_checkpoints_come_several_times_within_the_fence_even_with_a_short_replica_timeout(
    runtime: Runtime,
) -> None:
    manager = make_manager(runtime)
    for timeout in (1.0, 3.0, 30.0):
        manager.config = dataclasses.replace(manager.config, replica_timeout=timeout)
        assert manager.checkpoint_interval * 3 <= FENCE * timeout
