"""A caller that keeps reconnecting to ``/puppetWxkfManager/ws`` with wrong proofs (three per connection,
then the next connection) wrote four warning lines per connection, without bound: the HTTP routes'
refusals are rate-limited per reason (``wxkf.logging.warn_limited``), the socket's were not, so an
unauthenticated caller could fill the hub's log (and its disk) as fast as it could connect."""

from __future__ import annotations

import json
import logging

import pytest
from websockets.asyncio.client import connect

from manager.service import Manager
from tests.sockets.test_socket_limits import manager_url
from wxkf.logging import LIMITER

__all__ = ["manager_url"]

CONNECTIONS = 20


async def test_wrong_proofs_on_connection_after_connection_log_a_bounded_number_of_warnings(
    manager_url: tuple[Manager, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, url = manager_url
    caplog.set_level(logging.WARNING, logger="manager.socket_routes")
    for attempt in range(CONNECTIONS):
        async with connect(url) as ws:
            for n in range(3):
                frame = {"type": "auth", "id": f"{attempt}-{n}", "corpId": "wwcorp", "kfId": "wk1"}
                await ws.send(json.dumps(frame | {"webhookSecret": f"whsec_guess{attempt}{n}"}))
                assert json.loads(await ws.recv())["reason"] == "proof_refused"
            await ws.wait_closed()
            assert ws.close_code == 1008
    warnings = [
        r for r in caplog.records if r.name == "manager.socket_routes" and r.levelno == logging.WARNING
    ]
    assert 1 <= len(warnings) <= 2 * LIMITER.burst, len(warnings)  # before: 4 per connection, 80
