"""A real gateway on the test database and a real socket, with a recording stand-in for the manager."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway.app import gateway_app
from gateway.manager_link import HttpManagerSink
from gateway.service import Gateway, GatewayConfig
from tests.support.recorder import Recorder
from tests.support.servers import serve_app
from tests.support.wecom_callbacks import CorpAppKeys
from wxkf.delivery import DeliveryClient
from wxkf.retry import RetrySchedule
from wxkf.runtime import Runtime

ADMIN = "test-admin-token"
FAST_RETRIES = RetrySchedule((0.05, 0.1, 0.2, 0.4), jitter=0.0)


@pytest.fixture
async def listener() -> AsyncIterator[tuple[Recorder, str]]:
    recorder = Recorder()
    async with serve_app(recorder.app()) as url:
        yield recorder, url


@pytest.fixture
def keys() -> CorpAppKeys:
    return CorpAppKeys.random()


def make_gateway(
    runtime: Runtime, manager_url: str | None, replica: str = "gw-test", **config: Any
) -> Gateway:
    cfg = GatewayConfig(replica_id=replica, schedule=FAST_RETRIES, **config)
    deliveries = DeliveryClient(cfg.allowed_networks)  # the gateway closes it
    sink = HttpManagerSink(deliveries, manager_url) if manager_url else None
    return Gateway(runtime.db, runtime.box, runtime.http, cfg, manager_sink=sink, deliveries=deliveries)


@dataclass
class RunningGateway:
    gateway: Gateway
    url: str
    http: httpx.AsyncClient
    listener: Recorder
    keys: CorpAppKeys


@pytest.fixture
async def gw(
    runtime: Runtime, listener: tuple[Recorder, str], keys: CorpAppKeys
) -> AsyncIterator[RunningGateway]:
    """A started gateway serving one registered corp app, forwarding kf events to the listener."""
    recorder, manager_url = listener
    gateway = make_gateway(runtime, manager_url)
    await gateway.start()
    await gateway.registry.add(keys.corp_id, None, keys.token, keys.aes_key, "corp-secret-123")
    try:
        async with serve_app(gateway_app(gateway, ADMIN)) as url, httpx.AsyncClient(base_url=url) as http:
            yield RunningGateway(gateway, url, http, recorder, keys)
    finally:
        await gateway.stop()
