"""Refusal warnings are rate-limited: anyone can send junk, and 300 junk callbacks must not become 300
log lines (they are counted in ``/metrics`` either way)."""

from __future__ import annotations

import logging

import httpx
import pytest

from gateway.app import build_gateway, gateway_app
from tests.support.servers import serve_app
from wxkf.logging import LIMITER
from wxkf.runtime import Runtime


async def test_300_junk_callbacks_make_a_handful_of_log_lines(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = build_gateway(runtime)
    await gateway.start()
    try:
        async with serve_app(gateway_app(gateway, None)) as url, httpx.AsyncClient(base_url=url) as http:
            with caplog.at_level(logging.WARNING):
                for n in range(300):
                    answer = await http.post(f"/callback/wwjunk{n % 7}?msg_signature=x", content=b"<xml/>")
                    assert 400 <= answer.status_code < 500
    finally:
        await gateway.stop()
    messages = [record.getMessage() for record in caplog.records]
    refusals = [m for m in messages if m.startswith("refused POST") and "/callback/" in m]
    assert 1 <= len(refusals) <= LIMITER.burst * 3  # a few reasons at most, each its burst
