"""The puppet registry's cache: what the dispatch path reads on every callback."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Coroutine
from typing import Any

import pytest

from manager import puppets
from manager.puppets import Puppet, PuppetRegistry
from tests.support.clock import FakeClock
from wxkf.database import Database
from wxkf.secretbox import SecretBox

BOX = SecretBox(secrets.token_bytes(32))
TTL = 10.0


async def registered(db: Database, clock: FakeClock, *kf_ids: str) -> PuppetRegistry:
    registry = PuppetRegistry(db, BOX, cache_ttl=TTL, clock=clock)
    for kf_id in kf_ids:
        await registry.register(
            f"corp/{kf_id}",
            corp_id="corp",
            open_kfid=kf_id,
            kf_name=kf_id,
            endpoint="http://127.0.0.1:9",
            app=None,
            corp_secret="corp-secret",
            webhook_secret="whsec",
        )
    return registry


def counting_lookups(registry: PuppetRegistry) -> list[str]:
    """Record every key ``registry`` looks up in the database."""
    looked_up: list[str] = []
    load = registry._load

    def counted(key: str) -> Coroutine[Any, Any, Puppet | None]:
        looked_up.append(key)  # when the lookup is started, not when its task first runs
        return load(key)

    registry._load = counted  # type: ignore[method-assign]
    return looked_up


async def test_an_expired_entry_answers_at_once_and_is_refreshed_behind_the_answer(db: Database) -> None:
    clock = FakeClock()
    here = await registered(db, clock, "wk1")
    elsewhere = PuppetRegistry(db, BOX, cache_ttl=TTL, clock=clock)  # another replica
    await elsewhere.mark_offline("corp/wk1", probe_at=clock() + 5, failures=1)

    first = await here.get("corp/wk1")
    assert first is not None and first.online  # cached: the other replica's change is not seen yet
    clock.advance(0.9 * TTL)  # past its refresh time, before its expiry
    stale = await here.get("corp/wk1")
    assert stale is not None and stale.online  # answered from the cache, not after a lookup
    behind = await here.fresh("corp/wk1")  # joins the refresh that answer started
    assert behind is not None and not behind.online
    refreshed = await here.get("corp/wk1")
    assert refreshed is not None and not refreshed.online


async def test_an_entry_long_past_its_time_is_looked_up_first(db: Database) -> None:
    clock = FakeClock()
    here = await registered(db, clock, "wk1")
    await PuppetRegistry(db, BOX, cache_ttl=TTL, clock=clock).deregister("corp/wk1")  # elsewhere
    clock.advance(2 * TTL)  # a quiet account: its entry is too old to answer from
    seen = await here.get("corp/wk1")
    assert seen is not None and not seen.registered


async def test_concurrent_misses_for_one_account_share_one_lookup(db: Database) -> None:
    clock = FakeClock()
    await registered(db, clock, "wk1")
    cold = PuppetRegistry(db, BOX, cache_ttl=TTL, clock=clock)
    looked_up = counting_lookups(cold)
    found = await asyncio.gather(*(cold.get("corp/wk1") for _ in range(20)))
    assert looked_up == ["corp/wk1"]
    assert all(puppet is not None and puppet.open_kfid == "wk1" for puppet in found)


async def test_entries_made_together_do_not_all_expire_together(db: Database) -> None:
    clock = FakeClock()
    keys = [f"corp/wk{i}" for i in range(30)]
    registry = await registered(db, clock, *(key.partition("/")[2] for key in keys))
    looked_up = counting_lookups(registry)
    clock.advance(0.7 * TTL)  # past the earliest refresh time an entry can have (TTL/2), before the latest
    for key in keys:
        await registry.get(key)  # an expired entry starts its refresh
    refreshed = len(looked_up)
    for key in keys:
        await registry.fresh(key)  # let the refreshes finish
    assert 0 < refreshed < len(keys)


async def test_a_lookup_in_flight_does_not_undo_a_change_made_here(db: Database) -> None:
    clock = FakeClock()
    here = await registered(db, clock, "wk1")
    clock.advance(0.9 * TTL)  # the entry is due for a refresh
    read, proceed = asyncio.Event(), asyncio.Event()
    collection = here._collection
    find_one = collection.find_one

    async def held_back(*args: Any, **kwargs: Any) -> Any:
        doc = await find_one(*args, **kwargs)  # reads the puppet while it is still online
        read.set()
        await proceed.wait()
        return doc

    collection.find_one = held_back  # type: ignore[method-assign]
    assert (await here.get("corp/wk1")) is not None  # answers, and starts the refresh
    await read.wait()
    collection.find_one = find_one  # type: ignore[method-assign]
    await here.mark_offline("corp/wk1", probe_at=clock() + 5, failures=1)  # a change made here
    proceed.set()
    await here.fresh("corp/wk1")  # joins the refresh, which read the old state
    after = await here.get("corp/wk1")
    assert after is not None and not after.online


async def test_no_answer_is_older_than_the_cache_ttl(db: Database) -> None:
    clock = FakeClock()
    here = await registered(db, clock, "wk1")
    await PuppetRegistry(db, BOX, cache_ttl=TTL, clock=clock).deregister("corp/wk1")  # elsewhere
    clock.advance(TTL)  # the entry is TTL old: it is looked up, not answered
    seen = await here.get("corp/wk1")
    assert seen is not None and not seen.registered


async def test_a_full_cache_evicts_its_least_recently_used_entries_not_all_of_them(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(puppets, "CACHE_LIMIT", 10)
    clock = FakeClock()
    registry = await registered(db, clock, *(f"wk{i}" for i in range(12)))  # each registration caches
    looked_up = counting_lookups(registry)
    for i in (11, 10, 9):  # recently registered and used: still cached
        assert await registry.get(f"corp/wk{i}") is not None
    assert looked_up == []
    assert await registry.get("corp/wk0") is not None  # the oldest was evicted
    assert looked_up == ["corp/wk0"]
