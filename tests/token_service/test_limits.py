"""The token service's bounded maps: LRU eviction, refusals that expire, token buckets."""

from __future__ import annotations

from tests.support.clock import FakeClock
from token_service.limits import Budget, LruMap, RefusalCache


def test_lru_map_drops_the_least_recently_used_entry() -> None:
    lru: LruMap[int] = LruMap(3)
    for i, key in enumerate("abc"):
        lru.put(key, i)
    assert lru.get("a") == 0  # now the most recent
    lru.put("d", 3)
    assert len(lru) == 3
    assert lru.get("b") is None
    assert [lru.get(key) for key in "acd"] == [0, 2, 3]


def test_refusals_expire() -> None:
    clock = FakeClock()
    refusals = RefusalCache(10, clock)
    refusals.put("k", 40001, "invalid credential", ttl=60)
    clock.advance(59)
    refusal = refusals.get("k")
    assert refusal is not None and refusal.errcode == 40001
    clock.advance(1)
    assert refusals.get("k") is None
    assert len(refusals) == 0


def test_budget_allows_a_burst_then_the_rate_and_tracks_only_spenders() -> None:
    clock = FakeClock()
    budget = Budget(burst=3, rate=0.5, size=100, clock=clock)
    for _ in range(3):
        assert budget.wait_for("a") == 0.0
        budget.spend("a")
    assert budget.wait_for("a") == 2.0  # one call per 2 s
    clock.advance(2)
    assert budget.wait_for("a") == 0.0
    for key in map(str, range(50)):
        budget.wait_for(key)  # asking creates nothing
    assert len(budget) == 1
