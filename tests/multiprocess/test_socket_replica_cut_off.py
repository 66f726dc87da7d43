"""A manager replica cut off from the database (its own path to it hangs; the other replica's does not)
closes its puppets' sockets with 1013 once it can no longer renew its leases, and refuses new ones
meanwhile, so the puppet reconnects to the healthy replica and gets everything there.

Before, the cut-off replica kept the socket: the healthy one took it over and found no socket anywhere,
and the puppet, still connected to a replica that could neither deliver nor let go, waited until that
replica's database came back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from manager.sockets import TRY_LATER
from tests.multiprocess.conftest import World
from tests.multiprocess.test_socket_replicas import ACCOUNTS, SETTLE, assert_in_order, send_rounds
from tests.support.processes import stopped
from tests.support.socket_puppet import WS_PATH, socket_puppet
from tests.support.tcp_proxy import Proxy


@pytest.fixture
def database_path(world: World) -> Iterator[Proxy]:
    """A path to the test's database server of its own, to hang with SIGSTOP."""
    uri = world.cluster.settings.mongo_uri
    assert uri is not None
    address = urlsplit(uri)
    assert address.hostname is not None and address.port is not None
    proxy = Proxy.to(address.hostname, address.port)
    yield proxy
    proxy.close()


async def test_a_replica_cut_off_from_the_database_closes_its_sockets_and_the_puppet_moves(
    world: World, database_path: Proxy
) -> None:
    assert world.cluster.settings.mongo_uri is not None
    a = world.cluster.add("A")
    b = world.cluster.add("B", mongo_uri=database_path.uri_through(world.cluster.settings.mongo_uri))
    await world.cluster.start()
    await world.add_app(a)
    puppet = socket_puppet(world.keys, world.secret, world.accounts[:ACCOUNTS])
    try:
        await puppet.connect(b)
        traffic = world.traffic(a)
        await send_rounds(traffic, puppet, via=a)
        await world.nothing_lost(traffic, SETTLE, puppet)
        with stopped(database_path.process.pid):  # B's database hangs; A's does not
            assert await puppet.closed_by_manager(SETTLE) == TRY_LATER
            # while cut off, B refuses a new socket at the handshake (try later, elsewhere)
            with pytest.raises(InvalidStatus):
                async with connect(f"ws://127.0.0.1:{b.port}{WS_PATH}", open_timeout=10):
                    pass
            await puppet.connect(a)
            await send_rounds(traffic, puppet, via=a)
            await world.nothing_lost(traffic, SETTLE, puppet)
    finally:
        await puppet.disconnect()
        with contextlib.suppress(ProcessLookupError):
            await asyncio.to_thread(b.kill)
    assert "closing the sockets of" in b.log()
    assert "puppet socket refused: this replica cannot renew its leases" in b.log()
    assert_in_order(puppet, traffic)
    puppet.assert_never_two_at_once()
