"""Time as the simulator sees it.

Every rule reads time through a ``Clock`` (a function returning Unix seconds), so tests pass a clock
they move by hand and check a 48-hour window without waiting 48 hours. ``wxkf sim`` runs on an
:class:`OffsetClock`: real time plus an offset that ``POST /sim/clock/advance`` increases, so a
developer can expire tokens and windows while everything else keeps running in real time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

Clock = Callable[[], float]


@runtime_checkable
class AdjustableClock(Protocol):
    """A clock the control API may move forward (``FakeClock`` in tests, :class:`OffsetClock`)."""

    def __call__(self) -> float: ...

    def advance(self, seconds: float) -> None: ...


class OffsetClock:
    """``base()`` plus an offset that only grows: time can be skipped ahead, never rewound."""

    def __init__(self, base: Clock = time.time, offset: float = 0.0) -> None:
        self.base = base
        self.offset = offset

    def __call__(self) -> float:
        return self.base() + self.offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self.offset += seconds
