"""A link task that ends while the puppet runs (it never should; a bug or a stray cancellation) is
logged and started again: before, the host kept no watch on it, and the account stayed unregistered
for good with nothing in the log."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from puppets.bot import Bot
from puppets.manager_link import ManagerLink
from tests.puppets.conftest import Hosted
from tests.support.services import free_port


async def test_a_link_task_that_dies_is_logged_and_started_again(
    hosted: Callable[..., Awaitable[Hosted]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0
    restarted = asyncio.Event()

    async def run(self: ManagerLink) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("a bug in the link")
        restarted.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(ManagerLink, "run", run)
    await hosted(Bot(), callback=False, manager=f"http://127.0.0.1:{free_port()}")
    await asyncio.wait_for(restarted.wait(), 20)
    assert runs == 2
    assert "ended (RuntimeError) while the puppet runs; starting it again" in caplog.text
