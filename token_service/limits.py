"""Bounded in-memory state for the token service: an LRU map, cached refusals, per-key call budgets.

The token service answers unauthenticated callers, so nothing a caller chooses (a corpid, a secret,
its address) may grow memory without bound: every map here holds at most ``size`` entries and drops
the least recently used one first. Losing an entry is always safe: a forgotten cached token is read
from the database again, a forgotten refusal costs one more upstream call, a forgotten budget starts
full again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


class LruMap(Generic[V]):
    """A dict of at most ``size`` entries; reading or writing an entry makes it the most recent."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self._entries: OrderedDict[str, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def pop(self, key: str) -> V | None:
        return self._entries.pop(key, None)


@dataclass(frozen=True, slots=True)
class Refusal:
    """What upstream answered, and until when that answer is repeated without asking again."""

    errcode: int
    errmsg: str
    until: float


class RefusalCache:
    """Recent upstream refusals by key (a corpid, or a corpid+secret fingerprint), bounded."""

    def __init__(self, size: int, clock: Callable[[], float]) -> None:
        self._entries: LruMap[Refusal] = LruMap(size)
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Refusal | None:
        refusal = self._entries.get(key)
        if refusal is not None and refusal.until <= self._clock():
            self._entries.pop(key)
            return None
        return refusal

    def put(self, key: str, errcode: int, errmsg: str, ttl: float) -> None:
        self._entries.put(key, Refusal(errcode, errmsg, self._clock() + ttl))

    def forget(self, key: str) -> None:
        self._entries.pop(key)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_at: float


class Budget:
    """A token bucket per key: ``burst`` calls at once, then ``rate`` calls per second.

    ``wait_for(key)`` says how long until a call is allowed, ``spend(key)`` spends one; checking
    several budgets before spending in any keeps a refusal by one from costing the others. At most
    ``size`` keys are tracked, and only keys that spent a call.
    """

    def __init__(self, burst: float, rate: float, size: int, clock: Callable[[], float]) -> None:
        if burst < 1 or rate <= 0:
            raise ValueError("a budget needs burst >= 1 and rate > 0")
        self.burst = burst
        self.rate = rate
        self._buckets: LruMap[_Bucket] = LruMap(size)
        self._clock = clock

    def __len__(self) -> int:
        return len(self._buckets)

    def _refilled(self, key: str) -> _Bucket | None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            now = self._clock()
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated_at) * self.rate)
            bucket.updated_at = now
        return bucket

    def wait_for(self, key: str) -> float:
        """Seconds until ``key`` may spend a call (0.0: now). Tracks nothing new: an unknown key is full."""
        bucket = self._refilled(key)
        return 0.0 if bucket is None or bucket.tokens >= 1 else (1 - bucket.tokens) / self.rate

    def spend(self, key: str) -> None:
        bucket = self._refilled(key)
        if bucket is None:
            self._buckets.put(key, _Bucket(self.burst - 1, self._clock()))
        else:
            bucket.tokens -= 1
