"""Sliding-window rate limits, keyed (per app, per account, per robot...)."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable

from simulator.clock import Clock
from simulator.config import Rate


class SlidingWindow:
    """At most ``rate.calls`` hits per key in any ``rate.seconds`` window.

    Only allowed hits count, so a client that backs off regains its quota one window later, however
    often it was refused meanwhile. Exact (a log of timestamps), which is fine at simulator volumes.
    """

    def __init__(self, rate: Rate, clock: Clock) -> None:
        self.rate = rate
        self.clock = clock
        self._hits: dict[Hashable, deque[float]] = {}

    def has_room(self, key: Hashable) -> bool:
        hits = self._hits.get(key)
        if not hits:
            return True
        cutoff = self.clock() - self.rate.seconds
        while hits and hits[0] <= cutoff:
            hits.popleft()
        return len(hits) < self.rate.calls

    def record(self, key: Hashable) -> None:
        self._hits.setdefault(key, deque()).append(self.clock())

    def hit(self, key: Hashable) -> bool:
        """Record a hit for ``key`` and return True, or return False if the limit is reached."""
        if not self.has_room(key):
            return False
        self.record(key)
        return True


class Limits:
    """Several windows that must all allow a hit (e.g. 10,000 a minute *and* 150,000 an hour)."""

    def __init__(self, rates: Iterable[Rate], clock: Clock) -> None:
        self.windows = [SlidingWindow(rate, clock) for rate in rates]

    def has_room(self, key: Hashable) -> bool:
        return all(window.has_room(key) for window in self.windows)

    def record(self, key: Hashable) -> None:
        for window in self.windows:
            window.record(key)

    def hit(self, key: Hashable) -> bool:
        if not self.has_room(key):
            return False
        self.record(key)
        return True
