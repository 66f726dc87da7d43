"""Concurrent callers of one key share one call; a caller's cancellation leaves the call running."""

from __future__ import annotations

import asyncio

import pytest

from wxkf.single_flight import SingleFlight


async def test_concurrent_callers_share_one_call_and_a_cancelled_one_does_not_cancel_it() -> None:
    flight: SingleFlight[int] = SingleFlight()
    calls = 0
    started, release = asyncio.Event(), asyncio.Event()

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return 42

    callers = [asyncio.create_task(flight.run("app", fetch)) for _ in range(10)]
    other = asyncio.create_task(flight.run("other app", fetch))
    await started.wait()  # every caller above has asked by now (tasks start in order)
    callers[0].cancel()
    release.set()
    assert await asyncio.gather(*callers[1:]) == [42] * 9
    assert await other == 42
    with pytest.raises(asyncio.CancelledError):
        await callers[0]
    assert calls == 2  # one per key
    assert await flight.run("app", fetch) == 42 and calls == 3  # finished calls are not cached
