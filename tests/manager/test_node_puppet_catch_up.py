# ruff: noqa: F811 - the puppets' fixtures are imported by name and then requested by name
"""A Node puppet (the compat contract's test double: it pulls only on a callback) behind a real
``wxkf up``: the hub is down while a customer writes, WeCom gives up on that callback for good, and the
hub comes back. The restarted hub gives the account its newest callback again (the original XML,
WeCom's signature and a token that still works), so the Node puppet pulls and gets the message.
Before, nothing made it pull: the message waited for the customer's next one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from simulator.state import SimState
from tests.puppets.conftest import Corp, corp, sim, sim_config  # noqa: F401 - fixtures
from tests.support.node_puppet import NodePuppet
from tests.support.servers import serve_app
from tests.support.services import ServiceProcess, free_port, service_env
from wxkf.settings import Settings


@pytest.fixture
def hub(settings: Settings, tmp_path: Path, sim: tuple[str, SimState]) -> ServiceProcess:
    """``wxkf up`` on the test's database (not started), WeCom being the simulator."""
    env = service_env(settings, tmp_path / "hub", wecom_api_base=sim[0] + "/cgi-bin")
    return ServiceProcess("up", env, tmp_path / "hub.log", free_port())


@pytest.fixture
async def node_puppet(corp: Corp, sim: tuple[str, SimState]) -> AsyncIterator[tuple[NodePuppet, str]]:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
        puppet = NodePuppet(
            corp.corpid, corp.secret, corp.token, corp.aes_key, corp.kf, sim[0] + "/cgi-bin", http
        )
        async with serve_app(puppet.app()) as url:
            yield puppet, url


async def test_a_node_puppet_gets_what_wecom_gave_up_on_while_the_hub_was_down(
    corp: Corp, hub: ServiceProcess, node_puppet: tuple[NodePuppet, str]
) -> None:
    puppet, puppet_url = node_puppet
    try:
        await hub.start()
        await corp.set_callback(f"{hub.url}/callback/{corp.corpid}")
        registered = await puppet.register(hub.url, puppet_url)
        assert registered.json()["code"] == 0, registered.text
        await corp.says("before")
        assert await puppet.wait_for_texts(1) == ["before"]
        hub.stop()  # the hub is down: no replica takes WeCom's callbacks
        await corp.says("during the outage", wait=True)  # every retry fails: WeCom gives up for good
        assert puppet.texts == ["before"]
        await hub.start()  # alone: the callbacks it may have missed are caught up
        assert await puppet.wait_for_texts(2) == ["before", "during the outage"]
        assert puppet.callbacks == ["raw", "raw"]  # the original XML, as WeCom sent it
    finally:
        hub.stop()
