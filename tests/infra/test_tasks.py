"""stop_tasks: a task that absorbs a cancellation is cancelled again instead of hanging shutdown."""

from __future__ import annotations

import asyncio

from wxkf.tasks import stop_tasks


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
