"""The composition ``wxkf up`` runs (:class:`hub.up.Hub`): its stop runs every service's stop, each
within a deadline, whatever the others do."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hub import up
from hub.up import Hub
from wxkf.runtime import Runtime


async def test_a_failing_gateway_stop_does_not_skip_the_managers(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """The manager's stop holds its final checkpoint and lease release: it runs even when the
    gateway's stop raises, and the failure is logged rather than raised."""
    hub = Hub(runtime)
    await hub.start()
    assert hub.manager is not None
    manager_stop = hub.manager.stop
    stopped = asyncio.Event()

    async def broken_gateway_stop() -> None:
        raise RuntimeError("gateway stop failed")

    async def watched_manager_stop() -> None:
        await manager_stop()
        stopped.set()

    hub.gateway.stop = broken_gateway_stop  # type: ignore[method-assign]
    hub.manager.stop = watched_manager_stop  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="hub.up"):
        await hub.stop()
    assert stopped.is_set()
    assert any(
        r.getMessage() == "stopping the gateway failed" and r.exc_info is not None for r in caplog.records
    )


async def test_a_stop_that_overruns_is_abandoned_and_the_rest_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []
    never = asyncio.Event()

    async def hangs() -> None:
        ran.append("hangs")
        await never.wait()

    async def quick() -> None:
        ran.append("quick")

    with caplog.at_level(logging.ERROR, logger="hub.up"):
        await up.stop_each([("stuck service", hangs), ("next service", quick)], timeout=0.05)
    assert ran == ["hangs", "quick"]
    assert [r.getMessage() for r in caplog.records] == [
        "stopping the stuck service took longer than 0.05s; abandoned"
    ]
