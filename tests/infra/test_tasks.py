"""stop_tasks re-cancels a task that absorbs a cancellation; run_every survives a failed pass."""

from __future__ import annotations

import asyncio

import pytest

from wxkf.tasks import run_every, stop_tasks


async def test_a_task_that_swallows_one_cancellation_is_still_stopped() -> None:
    wake = asyncio.Event()
    swallowed = 0

    async def stubborn() -> None:  # what a library finishing its I/O after a cancel looks like
        nonlocal swallowed
        while True:
            try:
                await wake.wait()
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await stop_tasks([task], interval=0.05)
    assert task.cancelled()
    assert swallowed == 1


async def test_run_every_logs_a_failed_pass_and_keeps_going(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0
    second_pass = asyncio.Event()

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("one bad pass")
        second_pass.set()

    loop = asyncio.create_task(run_every(step, 0.0, "test loop", jitter=0.2))
    await asyncio.wait_for(second_pass.wait(), timeout=10)
    await stop_tasks([loop])
    assert calls >= 2
    assert "test loop failed" in caplog.text
