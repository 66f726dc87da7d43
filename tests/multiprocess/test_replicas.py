"""Two ``wxkf manager`` processes on one database, under callback traffic, while one of them crashes,
freezes, restarts in the middle of being taken over, or runs with its clock behind.

What must hold whatever happens (docs/architecture.md, Manager):

* **never two at once** — no two deliveries for one account overlap in time (the puppet holds each
  one open for a while, so a second delivery for the account would land inside it);
* **nothing lost** — once the chaos is over, every account gets a delivery after its newest
  acknowledged callback was sent, within a bounded time (so the puppet's pull finds every message:
  :meth:`tests.multiprocess.conftest.World.nothing_lost`).

Each scenario was seen to fail on the manager before issue 10's items 8-10 were fixed (overlaps, a
woken replica delivering stale work, callbacks never delivered) and to pass after.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

from tests.multiprocess.conftest import World
from tests.support.recording_puppet import RecordingPuppet
from tests.support.replicas import Manager, Traffic, eventually

REPLICAS = "manager_replicas"  # each manager's checkpoint record, claimed by the one taking it over
SETTLE = 30.0  # bound on every wait for the system to catch up
MORE = 6  # callbacks per account after a fault, so the survivors are exercised, not just idle
CLOCK_SKEW = 5.0  # seconds one manager's wall clock is behind the other's
STALE_CACHE_BOUND = 12.0  # > one puppet-cache TTL (10 s): a re-check may wait for the entry to expire
IDLE_RELEASE = 2.0  # WXKF_IDLE_RELEASE where a test waits for idle leases to go
LEASE_RELEASE = 5 * IDLE_RELEASE  # bound on that wait


def busy_with_more_queued(puppet: RecordingPuppet, traffic: Traffic, sender: str, accounts: int = 2) -> bool:
    """``sender`` has delivered a few times, is delivering for ``accounts`` accounts right now, and has
    since acknowledged a newer callback for each (work queued behind the delivery, owed only in its
    memory)."""
    queued = {
        d.account
        for d in puppet.in_flight(sender)
        for ack in traffic.acks
        if ack.by == sender and ack.account == d.account and ack.at > d.started
    }
    return len(puppet.by(sender)) >= 3 and len(queued) >= accounts


async def b_serves_every_account(world: World, since: float) -> None:
    """Wait until B has delivered for every account since ``since`` (for A's accounts, only a takeover
    lets it)."""
    puppet = world.puppet

    def served() -> bool:
        return all(any(d.account == kf for d in puppet.by("B", since=since)) for kf in world.accounts)

    await puppet.wait(served, SETTLE, "B serves every account")


async def more_traffic(world: World, traffic: Traffic) -> None:
    """Wait for ``MORE`` acknowledged callbacks per account (the traffic is running)."""
    await traffic.wait_sent({kf: traffic.sent(kf) + MORE for kf in world.accounts})


async def start_two(world: World, **env: str) -> tuple[Manager, Manager, Traffic]:
    """Managers A and B, every account registered through one of them, traffic for both."""
    a, b = world.cluster.add("A", **env), world.cluster.add("B", **env)
    await world.cluster.start()
    await world.register_all(a, b)
    return a, b, world.traffic(a, b)


async def fail_a_while_busy(world: World, traffic: Traffic, fault: Callable[[], None]) -> float:
    """Once A is mid-delivery with more work queued behind it, take A out of the balancer's rotation
    and apply ``fault`` to it; returns when (monotonic) that happened."""
    puppet, a = world.puppet, world.cluster["A"]
    await eventually(lambda: busy_with_more_queued(puppet, traffic, a.label), SETTLE, f"{a.label} busy")
    traffic.rotation = [world.cluster["B"]]  # what was in flight to A is retried on B
    fault()
    return time.monotonic()


async def test_sigkill_of_a_manager_under_traffic_loses_nothing_and_never_doubles(world: World) -> None:
    a, _, traffic = await start_two(world)
    async with traffic.running(world.accounts):
        await b_serves_every_account(world, since=await fail_a_while_busy(world, traffic, a.kill))
        await more_traffic(world, traffic)
    await world.nothing_lost(traffic)
    world.puppet.assert_never_two_at_once()


async def test_a_paused_manager_that_wakes_after_its_takeover_delivers_nothing_for_accounts_it_lost(
    world: World,
) -> None:
    """SIGSTOP of A while it delivers; B takes A over and serves its accounts; SIGCONT of A, which
    wakes with deliveries half done and callbacks queued in its sockets, and goes back into the
    balancer's rotation."""
    a, b, traffic = await start_two(world)
    puppet = world.puppet
    async with traffic.running(world.accounts):
        await b_serves_every_account(world, since=await fail_a_while_busy(world, traffic, a.pause))
        a.resume()
        woke = time.monotonic()
        traffic.rotation = [a, b]
        await more_traffic(world, traffic)
    await world.nothing_lost(traffic)
    puppet.assert_never_two_at_once()
    stale = [d.describe(puppet.origin) for d in puppet.by("A", since=woke)]
    assert not stale, f"A delivered after it woke, for accounts B had taken over: {stale}"


async def test_a_restart_during_its_takeover_never_leaves_two_managers_serving_one_account(
    world: World,
) -> None:
    """A crashes; B begins to take it over (claims A's replica record) and freezes right there; A
    restarts under the same replica id and serves again; then B wakes and finishes the takeover of a
    replica that is alive again. The replica timeout is longer here, so that B, frozen until A serves
    again, is not itself taken over meanwhile (that is the paused-replica scenario)."""
    a, b, traffic = await start_two(world, wxkf_replica_timeout="5")
    puppet = world.puppet
    async with traffic.running(world.accounts):
        for _ in range(3):
            await fail_a_while_busy(world, traffic, a.kill)
            if await freeze_b_in_the_act_of_taking_a_over(world):
                break
            await a.start()  # B was too quick: its takeover is over. Again, with A back.
            traffic.rotation = [a, b]
        else:
            raise AssertionError("B finished every takeover of A before the test could freeze it")
        await a.start()  # the same replica id, while B is frozen half-way through taking it over
        restarted, restart = time.monotonic(), a.label
        traffic.rotation = [a]
        await puppet.wait(lambda: len(puppet.by(restart, since=restarted)) >= 2, SETTLE, f"{restart} serves")
        b.resume()
        traffic.rotation = [a, b]
        await more_traffic(world, traffic)
    await world.nothing_lost(traffic)
    puppet.assert_never_two_at_once()


async def freeze_b_in_the_act_of_taking_a_over(world: World) -> bool:
    """A is dead. Watch its replica record: B's takeover begins by writing it (the claim) and ends
    by deleting it. SIGSTOP B the moment the record changes; True if that was before the delete."""
    replicas = world.db[REPLICAS]
    last_words = await replicas.find_one({"_id": "mp-A"})  # what A wrote before it died
    async with asyncio.timeout(SETTLE):
        while (seen := await replicas.find_one({"_id": "mp-A"})) == last_words:
            pass  # no sleep: the window between the claim and the end of the takeover is short
    world.cluster["B"].pause()
    if seen is None:  # too late: the takeover is over
        world.cluster["B"].resume()
        return False
    return True


async def wall_clock_of(world: World, manager: Manager) -> float:
    """What ``manager``'s process believes the time is (its HTTP ``Date`` header, 1 s resolution)."""
    answer = await world.http.get(f"{manager.url}/healthz")
    return parsedate_to_datetime(answer.headers["date"]).timestamp()


async def test_a_newer_callback_accepted_by_a_manager_whose_clock_is_behind_is_delivered(
    world: World,
) -> None:
    """B's wall clock is 5 s behind A's (libfaketime). Callbacks reach both; then, per account, one
    through A is delivered and a newer one goes through B: it must be delivered too, and once all is
    quiet no account stays leased."""
    idle = {"wxkf_idle_release": str(IDLE_RELEASE)}
    a, b = world.cluster.add("A", **idle), world.cluster.add("B", clock_offset=-CLOCK_SKEW, **idle)
    await world.cluster.start()
    skew = await wall_clock_of(world, a) - await wall_clock_of(world, b)
    assert CLOCK_SKEW - 1.5 <= skew <= CLOCK_SKEW + 1.5, f"B's clock is {skew:.0f} s behind, not {CLOCK_SKEW}"
    await world.register_all(a, b)
    puppet, traffic = world.puppet, world.traffic(a, b)
    async with traffic.running(world.accounts):
        await traffic.wait_sent({kf: MORE for kf in world.accounts})

    async def through_a_then_newer_through_b(kf: str) -> None:
        first = await traffic.send(kf, via=a)
        await puppet.wait(lambda: first in puppet.tokens(kf), SETTLE, f"{first} delivered")
        await traffic.send(kf, via=b)  # newer by any real clock, 5 s older by B's

    await asyncio.gather(*(through_a_then_newer_through_b(kf) for kf in world.accounts))
    await world.nothing_lost(traffic, timeout=15.0)
    puppet.assert_never_two_at_once()
    await world.no_lease_held(LEASE_RELEASE)


async def test_an_event_accepted_where_the_puppet_cache_is_stale_is_delivered_without_another_callback(
    world: World,
) -> None:
    """A sees a callback for an account with no puppet yet (and caches "no live puppet"); the puppet
    registers through B, which delivers that first event. A then accepts a second callback while its
    cache still says "no puppet": it must reach the puppet within a bounded time, without waiting for
    the account's next callback."""
    a, b = world.cluster.add("A"), world.cluster.add("B")
    await world.cluster.start()
    puppet, traffic = world.puppet, world.traffic(a, b)
    kf = world.accounts[0]
    await world.add_app(a)
    early = await traffic.send(kf, via=a)  # unroutable for now: stored, not delivered
    await world.register(kf, via=b)
    await puppet.wait(lambda: early in puppet.tokens(kf), SETTLE, "the early event delivered on registration")
    # One more through B, answered: B is done with the early event's bookkeeping and idle again.
    settled = await traffic.send(kf, via=b)
    await puppet.wait(lambda: settled in puppet.answered(kf), SETTLE, "B's own event delivered")
    await traffic.send(kf, via=a)  # A's cache still says "no live puppet"
    await world.nothing_lost(traffic, timeout=STALE_CACHE_BOUND)
    puppet.assert_never_two_at_once()


async def test_a_manager_restarted_with_its_clock_stepped_back_still_delivers_newer_callbacks(
    world: World,
) -> None:
    """A delivers for every account and stops in order (its delivery progress recorded); it comes
    back under the same replica id with its wall clock 5 s behind (a clock stepped back across a
    restart). Newer callbacks must still be delivered."""
    a = world.cluster.add("A")
    await world.cluster.start()
    await world.register_all(a)
    puppet, traffic = world.puppet, world.traffic(a)
    firsts = {kf: await traffic.send(kf) for kf in world.accounts}
    await puppet.wait(lambda: all(t in puppet.answered(kf) for kf, t in firsts.items()), SETTLE, "delivered")
    await a.stop()
    a.shift_clock(-CLOCK_SKEW)
    await a.start()
    for kf in world.accounts:
        await traffic.send(kf)  # newer by any real clock, 5 s older by A's new one
    await world.nothing_lost(traffic, timeout=15.0)
    puppet.assert_never_two_at_once()
