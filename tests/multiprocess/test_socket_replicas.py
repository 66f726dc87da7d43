"""A socket puppet (``/puppetWxkfManager/ws``) and two ``wxkf manager`` replicas on one database: the
puppet is connected to one replica while callbacks reach the other, moves between them, and loses the
one it is connected to (SIGKILL, with the puppet back at once or only later; SIGSTOP long enough to be
taken over).

What must hold (docs/architecture.md, "Socket puppets"), as for HTTP puppets:

* **delivered** — every account gets a delivery after its newest acknowledged callback was sent
  (:meth:`tests.multiprocess.conftest.World.nothing_lost`), whichever replica accepted it and
  whichever holds the socket;
* **in order** — per account, no delivery carries an older callback's token than one before it;
* **never two at once** — no two deliveries for one account overlap.

Before the lease followed the socket, the first scenario stalled: the replica holding an account's
lease had no socket for it, parked it as offline and kept the lease, so nothing was delivered. The
later ones fail without the takeover forgetting a dead replica's socket claims, and without a replica
that finds itself taken over closing its sockets.
"""

from __future__ import annotations

import asyncio
import itertools
import time

from manager.sockets import TRY_LATER
from tests.multiprocess.conftest import World
from tests.support.replicas import Manager, Traffic
from tests.support.socket_puppet import SocketPuppet, socket_puppet

PUPPETS = "puppets"  # the registry: online or not, and which replica holds the socket
ACCOUNTS = 3
ROUNDS = 4  # callbacks per account sent through one replica in turn
MORE = 5  # callbacks per account while the traffic runs
SETTLE = 20.0  # bound on every wait for deliveries to catch up
IDLE_RELEASE = 2.0  # WXKF_IDLE_RELEASE: leases of idle accounts go soon, so a test can wait for it
LEASE_RELEASE = 5 * IDLE_RELEASE  # bound on that wait


async def start_two(world: World) -> tuple[Manager, Manager, SocketPuppet]:
    idle = {"wxkf_idle_release": str(IDLE_RELEASE)}
    a, b = world.cluster.add("A", **idle), world.cluster.add("B", **idle)
    await world.cluster.start()
    await world.add_app(a)
    return a, b, socket_puppet(world.keys, world.secret, world.accounts[:ACCOUNTS])


async def send_rounds(traffic: Traffic, puppet: SocketPuppet, via: Manager) -> None:
    for _ in range(ROUNDS):
        for kf in puppet.accounts:
            await traffic.send(kf, via=via)


async def parked_as_offline(world: World, puppet: SocketPuppet, timeout: float = SETTLE) -> None:
    """Wait until every account's puppet is recorded offline with no replica holding its socket."""

    async def still_online() -> list[str]:
        keys = [f"{world.corp_id}/{kf}" for kf in puppet.accounts]
        cursor = world.db[PUPPETS].find({"_id": {"$in": keys}}, projection={"online": 1, "socket_owner": 1})
        return [str(doc) async for doc in cursor if doc.get("online") or doc.get("socket_owner")]

    online = await still_online()
    try:
        async with asyncio.timeout(timeout):
            while online:
                await asyncio.sleep(0.2)  # polling the database: no event to wait on
                online = await still_online()
    except TimeoutError:
        raise AssertionError(f"puppets not offline after {timeout} s: {online}") from None


def assert_in_order(puppet: SocketPuppet, traffic: Traffic) -> None:
    """Per account, the tokens delivered never go back to an older callback's (repeats are fine)."""
    for kf in puppet.accounts:
        position = {token: n for n, token in enumerate(traffic.acked.get(kf, []))}
        ours = [d for d in puppet.deliveries if d.account == kf]
        delivered = [(position.get(d.token, -1), d.describe(puppet.origin)) for d in ours]
        assert all(n >= 0 for n, _ in delivered), f"{kf}: a token never acknowledged: {delivered}"
        backwards = [(p, q) for p, q in itertools.pairwise(delivered) if q[0] < p[0]]
        assert not backwards, f"{kf}: a delivery carried an older token than the one before: {backwards}"


async def test_a_socket_puppet_gets_what_the_other_replica_accepts_in_order_and_follows_when_it_moves(
    world: World,
) -> None:
    a, b, puppet = await start_two(world)
    try:
        await puppet.connect(b)  # B takes the leases as it wakes the accounts; they go when idle
        await world.no_lease_held(LEASE_RELEASE)
        traffic = world.traffic(a)
        await send_rounds(traffic, puppet, via=a)  # A accepts and takes the leases; B has the socket
        await world.nothing_lost(traffic, SETTLE, puppet)
        traffic.rotation = [a, b]  # both accept at once
        async with traffic.running(puppet.accounts, interval=0.1):
            await traffic.wait_sent({kf: traffic.sent(kf) + MORE for kf in puppet.accounts})
        await world.nothing_lost(traffic, SETTLE, puppet)
        await puppet.connect(a)  # the puppet moves to A
        moved = time.monotonic()
        await world.no_lease_held(LEASE_RELEASE)
        await send_rounds(traffic, puppet, via=b)  # B accepts and takes the leases; A has the socket
        await world.nothing_lost(traffic, SETTLE, puppet)
    finally:
        await puppet.disconnect()
    assert {d.sender for d in puppet.deliveries} == {"A", "B"}
    stale = [d.describe(puppet.origin) for d in puppet.by("B", since=moved)]
    assert not stale, f"B delivered on a socket the puppet had left: {stale}"
    assert_in_order(puppet, traffic)
    puppet.assert_never_two_at_once()


async def test_the_replica_holding_the_socket_is_killed_and_the_survivor_delivers_everything(
    world: World,
) -> None:
    a, b, puppet = await start_two(world)
    try:
        await puppet.connect(b)
        traffic = world.traffic(a, b)
        async with traffic.running(puppet.accounts, interval=0.1):
            await traffic.wait_sent({kf: MORE for kf in puppet.accounts})
            await puppet.wait(lambda: len(puppet.by("B")) >= ACCOUNTS, SETTLE, "B delivers")
            traffic.rotation = [a]  # the balancer drops B, which dies with the socket open
            b.kill()
            await puppet.connect(a)  # the puppet reconnects to the survivor
            killed = time.monotonic()
            await traffic.wait_sent({kf: traffic.sent(kf) + MORE for kf in puppet.accounts})
        await world.nothing_lost(traffic, SETTLE, puppet)
    finally:
        await puppet.disconnect()
    assert all(d.sender == "A" for d in puppet.deliveries if d.started >= killed)
    assert_in_order(puppet, traffic)
    puppet.assert_never_two_at_once()


async def test_a_puppet_whose_replica_died_waits_offline_and_gets_everything_when_it_reconnects(
    world: World,
) -> None:
    """B dies with the socket open and the puppet stays away a while: once B is taken over, the
    survivor finds no socket anywhere and parks the accounts as offline (nothing handed to a dead
    replica); the puppet connects to it, and everything flows."""
    a, b, puppet = await start_two(world)
    try:
        await puppet.connect(b)
        traffic = world.traffic(a)
        await send_rounds(traffic, puppet, via=a)
        await world.nothing_lost(traffic, SETTLE, puppet)
        b.kill()
        await puppet.disconnect()
        await send_rounds(traffic, puppet, via=a)  # no socket is open anywhere now
        await parked_as_offline(world, puppet)
        await puppet.connect(a)
        await world.nothing_lost(traffic, SETTLE, puppet)
    finally:
        await puppet.disconnect()
    assert_in_order(puppet, traffic)
    puppet.assert_never_two_at_once()


async def test_a_replica_taken_over_while_paused_closes_its_sockets_and_the_puppet_moves(
    world: World,
) -> None:
    """SIGSTOP of B, which holds the socket: A takes it over (B's claims are forgotten) and parks the
    accounts as offline. SIGCONT of B: it learns it was taken over, delivers nothing, and closes its
    sockets so that their puppets prove again; the puppet connects to A and everything flows."""
    a, b, puppet = await start_two(world)
    try:
        await puppet.connect(b)
        traffic = world.traffic(a)
        await send_rounds(traffic, puppet, via=a)
        await world.nothing_lost(traffic, SETTLE, puppet)
        b.pause()
        await send_rounds(traffic, puppet, via=a)  # the socket is open, to a replica that runs nothing
        await parked_as_offline(world, puppet)
        b.resume()
        resumed = time.monotonic()
        assert await puppet.closed_by_manager(SETTLE) == TRY_LATER
        await puppet.connect(a)
        await world.nothing_lost(traffic, SETTLE, puppet)
    finally:
        await puppet.disconnect()
    stale = [d.describe(puppet.origin) for d in puppet.by("B", since=resumed)]
    assert not stale, f"B delivered after it woke up taken over: {stale}"
    assert_in_order(puppet, traffic)
    puppet.assert_never_two_at_once()
