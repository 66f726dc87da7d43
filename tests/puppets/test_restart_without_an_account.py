"""``wxkf puppet`` SIGKILLed and restarted, on the same endpoint, with a config that no longer lists an
account, under a real ``wxkf up``: the hub's registration of that account still points there, and the
new process answers its deliveries ``404 account_not_served``. The hub takes the account offline and
keeps its events (before, the process answered ``success``: the hub marked them delivered and went on
delivering there), and a puppet that registers the account gets them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from simulator.state import SimState
from tests.puppets.conftest import Corp, PuppetProcess, wait_until
from tests.puppets.test_hub import hub, hub_env, registered
from tests.support.corp import corp_spec, create_corp
from tests.support.services import ServiceProcess, free_port, puppet_info

__all__ = ["hub", "hub_env"]

OTHER = "wkOTHER"  # the account the restarted process serves instead


@pytest.fixture
async def corp(sim: tuple[str, SimState]) -> AsyncIterator[Corp]:
    """A corp with two kf accounts in one app."""
    sim_url, _ = sim
    accounts = [{"open_kfid": "wkSUPPORT", "name": "Support"}, {"open_kfid": OTHER, "name": "Other"}]
    async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
        keys = await create_corp(http, sim_url, corp_spec(accounts))
        yield Corp(sim_url, http, keys.corpid, keys.secret, keys.token, keys.aes_key)


async def test_a_puppet_restarted_without_an_account_does_not_take_that_accounts_callbacks(
    corp: Corp, hub: ServiceProcess, puppet_env: dict[str, str], tmp_path: Path
) -> None:
    await corp.set_callback(f"{hub.url}/callback/{corp.corpid}")
    made: list[PuppetProcess] = []

    def puppet(name: str, account: str, port: int) -> PuppetProcess:
        config = tmp_path / f"{name}.toml"
        toml = corp.config_toml(port, manager=hub.url, self_endpoint=f"http://127.0.0.1:{port}")
        config.write_text(toml.replace(f'accounts = ["{corp.kf}"]', f'accounts = ["{account}"]'))
        args = ["--bot", "examples.echo:bot", "--config", str(config)]
        made.append(PuppetProcess(args, puppet_env, tmp_path / f"{name}.log", port))
        return made[-1]

    async def online() -> bool:
        return (await puppet_info(hub, corp))["online"] is True

    async def offline() -> bool:
        return (await puppet_info(hub, corp))["online"] is False

    try:
        port = free_port()
        first = puppet("first", corp.kf, port)
        await first.start()
        await wait_until(lambda: registered(first), what="registration")
        first.kill()
        restarted = puppet("restarted", OTHER, port)  # same endpoint, without corp.kf
        await restarted.start()
        await wait_until(lambda: registered(restarted), what="registration of the other account")
        await corp.says("while nobody serves the account")
        # the delivery to the stale registration is refused, and the hub reads it: offline
        await wait_until(offline, what="the stale registration taken offline")
        assert "callback refused: account_not_served" in restarted.log()
        assert await corp.received() == []
        successor = puppet("successor", corp.kf, free_port())
        await successor.start()
        await wait_until(lambda: registered(successor), what="registration of the account again")
        assert await corp.wait_received(1) == ["echo: while nobody serves the account"]
        assert await online()
    finally:
        for process in made:
            process.stop()
