"""The retry schedule shared by every durable delivery (gateway forwards, subscriptions, puppet dispatch).

Delays grow along a configurable list (default 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, the schedule
webhook senders commonly use) with ±20 % jitter so a recovering receiver is not hit by a synchronized
wave. After the last delay the delivery is dead-lettered.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

# Jitter draws from its own generator: it never changes (or depends on) the global random state that
# applications and tests seed.
JITTER = random.Random()

DEFAULT_DELAYS: tuple[float, ...] = (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)


def backoff(bounds: tuple[float, float], failures: int) -> float:
    """The wait after ``failures`` (>= 1) failures in a row: ``bounds[0]`` doubling up to ``bounds[1]``,
    ±20 % jitter (reconnecting and re-registering loops)."""
    first, most = bounds
    return min(most, first * 2 ** (failures - 1)) * JITTER.uniform(0.8, 1.2)


def parse_delays(text: str) -> tuple[float, ...]:
    """Parse ``"5s,5m,30m,2h"`` (plain numbers are seconds)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    delays = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        scale = units.get(part[-1])
        number = part[:-1] if scale else part
        value = float(number) * (scale or 1)
        if value < 0:
            raise ValueError(f"negative delay {part!r}")
        delays.append(value)
    if not delays:
        raise ValueError("empty retry schedule")
    return tuple(delays)


@dataclass(frozen=True)
class RetrySchedule:
    delays: Sequence[float] = DEFAULT_DELAYS
    jitter: float = 0.2

    @property
    def max_attempts(self) -> int:
        """Attempts in total: the first one plus one per delay."""
        return len(self.delays) + 1

    def delay_after(self, failed_attempts: int) -> float | None:
        """Seconds to wait after ``failed_attempts`` failures, or ``None`` when it is time to give up."""
        if failed_attempts < 1 or failed_attempts > len(self.delays):
            return None
        base = self.delays[failed_attempts - 1]
        return base * JITTER.uniform(1 - self.jitter, 1 + self.jitter)
