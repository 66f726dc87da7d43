"""Which manager replica holds a socket puppet's socket (the puppet registry's claim): the newest proof
wins, a closed socket releases only its own claim, only the replica with the socket (or any, when none
has it) may mark the puppet offline, and a restart or a takeover forgets a replica's claims."""

from __future__ import annotations

import secrets

from manager.puppets import PuppetRegistry
from manager.sockets import SOCKET_ENDPOINT
from tests.support.clock import FakeClock
from wxkf.database import Database
from wxkf.secretbox import SecretBox

BOX = SecretBox(secrets.token_bytes(32))
KEY = "corp/wk1"


async def registry_with_puppet(db: Database, endpoint: str = SOCKET_ENDPOINT) -> PuppetRegistry:
    registry = PuppetRegistry(db, BOX, clock=FakeClock())
    await registry.register(
        KEY,
        corp_id="corp",
        open_kfid="wk1",
        kf_name="wk1",
        endpoint=endpoint,
        app=None,
        corp_secret="corp-secret",
        webhook_secret="whsec",
    )
    return registry


async def owner(registry: PuppetRegistry) -> str | None:
    puppet = await registry.fresh(KEY)
    assert puppet is not None
    return puppet.socket_owner


async def test_only_the_replica_holding_the_socket_may_mark_the_puppet_offline(db: Database) -> None:
    registry = await registry_with_puppet(db)
    await registry.claim_socket(KEY, "B", "life-b", "claim-1")
    assert not await registry.mark_offline(KEY, 0.0, 0, by="A")  # A cannot tell: B has the socket
    puppet = await registry.fresh(KEY)
    assert puppet is not None and puppet.live and puppet.served_by_another("A")
    assert not puppet.served_by_another("B")
    assert await registry.mark_offline(KEY, 0.0, 0, by="B")
    puppet = await registry.fresh(KEY)
    assert puppet is not None and not puppet.live


async def test_a_claim_marks_the_puppet_online_and_the_newest_claim_wins(db: Database) -> None:
    registry = await registry_with_puppet(db)
    assert await registry.mark_offline(KEY, 0.0, 0, by="A")  # no socket anywhere yet
    assert await registry.claim_socket(KEY, "A", "life-a", "claim-1")  # it came back
    assert not await registry.claim_socket(KEY, "B", "life-b", "claim-2")  # already online
    assert await owner(registry) == "B"
    await registry.release_socket(KEY, "claim-1")  # A's old connection closes late: nothing changes
    assert await owner(registry) == "B"
    await registry.release_socket(KEY, "claim-2")
    assert await owner(registry) is None
    assert await registry.mark_offline(KEY, 0.0, 0, by="A")  # now anyone may


async def test_a_takeover_forgets_only_the_dead_lifes_claims_and_a_start_all_of_its_own(db: Database) -> None:
    registry = await registry_with_puppet(db)
    await registry.claim_socket(KEY, "B", "life-2", "claim-1")  # B restarted (life 2) and holds it
    assert await registry.release_sockets("B", "life-1") == 0  # the takeover of B's first life
    assert await owner(registry) == "B"
    assert await registry.release_sockets("B") == 1  # B starts again: it holds no socket yet
    assert await owner(registry) is None


async def test_registering_again_over_http_forgets_the_socket(db: Database) -> None:
    registry = await registry_with_puppet(db)
    await registry.claim_socket(KEY, "B", "life-b", "claim-1")
    await registry_with_puppet(db, endpoint="http://127.0.0.1:9")
    assert await owner(registry) is None
    assert await registry.mark_offline(KEY, 0.0, 0, by="A")
