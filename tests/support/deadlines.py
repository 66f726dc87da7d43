"""A hung test fails on its own and leaves nothing running for the next one (a pytest plugin).

Every test shares one event loop (``asyncio_default_test_loop_scope = "session"``). pytest-timeout's
signal raises its failure wherever the main thread is, and a hung test is usually waiting in the
loop's ``select``: the failure then leaves through ``run_until_complete`` with the test's task still
pending, and that task goes on running inside the next test's fixtures (on their database, their
servers). So:

* each coroutine test runs under an :func:`asyncio.timeout` shorter than its pytest-timeout (80 %
  of it): a hang is a cancellation inside the loop, the test's own ``finally`` blocks and fixtures
  unwind, and the failure shows where the test was waiting;
* whatever a test started and left pending (its own task when the timeout signal got it first, or a
  task that absorbed its cancellation) is cancelled, again until it ends, before the next test
  starts (:func:`wxkf.tasks.stop_tasks`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from wxkf.tasks import stop_tasks

SHARE = 0.8  # of the test's pytest-timeout, for its own deadline


def timeout_of(item: pytest.Item) -> float | None:
    """The test's pytest-timeout in seconds (its ``timeout`` mark, else the ini's); None if none."""
    marker = item.get_closest_marker("timeout")
    value: Any = None
    if marker is not None:
        value = marker.args[0] if marker.args else marker.kwargs.get("timeout")
    if value is None:
        value = item.config.getini("timeout") or None
    seconds = float(value) if value is not None else 0.0
    return seconds if seconds > 0 else None


def with_deadline(
    test: Callable[..., Coroutine[Any, Any, Any]], seconds: float
) -> Callable[..., Coroutine[Any, Any, Any]]:
    """``test`` cancelled after ``seconds``, and then failed (the cancellation's traceback shows where
    it waited)."""

    @functools.wraps(test)
    async def bounded(*args: Any, **kwargs: Any) -> Any:
        deadline = asyncio.timeout(seconds)
        try:
            async with deadline:
                return await test(*args, **kwargs)
        except TimeoutError:
            if deadline.expired():
                pytest.fail(f"the test did not finish within {seconds:g} s")
            raise

    return bounded


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        test = getattr(item, "obj", None)
        seconds = timeout_of(item)
        if seconds is not None and inspect.iscoroutinefunction(test):
            item.obj = with_deadline(test, seconds * SHARE)  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
async def nothing_left_running() -> AsyncIterator[None]:
    """Cancel, until they end, the tasks this test started and left pending (set up before the
    test's other fixtures of its scope, so it ends after they have)."""
    before = asyncio.all_tasks()
    yield
    left = asyncio.all_tasks() - before - {asyncio.current_task()}
    await stop_tasks(left)
