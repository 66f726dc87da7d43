"""A simulator as WeCom on a real socket, a corp in it, and ``wxkf puppet`` as a real child process.

The simulator runs in the test's event loop on real time (an :class:`OffsetClock`), because the
puppet is another process that reads no fake clock. Token-less pulls are not rate-limited unless a
test asks, so start-up catch-ups are immediate; callbacks are retried quickly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from puppets.account import Account, AccountSpec
from puppets.bot import Bot
from puppets.config import PuppetConfig
from puppets.host import PuppetHost
from simulator import SimConfig, create_app
from simulator.clock import OffsetClock
from simulator.state import SimState
from tests.support.corp import Corp, corp_spec, create_corp, toml_value
from tests.support.puppet_process import REPO, PuppetProcess
from tests.support.puppet_process import puppet_env as make_puppet_env
from tests.support.servers import serve_app
from tests.support.services import free_port
from tests.support.waiting import wait_until
from wxkf.database import Database
from wxkf.settings import Settings

__all__ = ["REPO", "SIM_CONFIG", "Corp", "Hosted", "PuppetProcess", "toml_value", "wait_until"]

SIM_CONFIG = SimConfig(callback_timeout=2.0, callback_retry_delays=(0.2, 0.2, 0.2), sync_tokenless_rate=None)


@pytest.fixture
def sim_config() -> SimConfig:
    """Override in a test module to change the simulator's rules."""
    return SIM_CONFIG


@pytest.fixture
async def sim(sim_config: SimConfig) -> AsyncIterator[tuple[str, SimState]]:
    state = SimState(clock=OffsetClock(), config=sim_config)
    async with serve_app(create_app(state), lifespan="on") as url:
        yield url, state


@pytest.fixture
async def corp(sim: tuple[str, SimState]) -> AsyncIterator[Corp]:
    sim_url, _ = sim
    async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
        keys = await create_corp(http, sim_url, corp_spec())
        yield Corp(sim_url, http, keys.corpid, keys.secret, keys.token, keys.aes_key)


@pytest.fixture
def puppet_env(settings: Settings, tmp_path: Path, sim: tuple[str, SimState], corp: Corp) -> dict[str, str]:
    """The child's environment: the test's database, the simulator as WeCom, the app secret."""
    return make_puppet_env(settings, sim[0] + "/cgi-bin", corp.secret)


@pytest.fixture
def make_puppet(
    tmp_path: Path, puppet_env: dict[str, str], corp: Corp
) -> Iterator[Callable[..., PuppetProcess]]:
    made: list[PuppetProcess] = []

    def make(bot: str = "examples.echo:bot", *, port: int | None = None, **top: Any) -> PuppetProcess:
        port = port or free_port()
        config = tmp_path / f"puppets-{len(made)}.toml"
        config.write_text(corp.config_toml(port, **top))
        process = PuppetProcess(
            ["--bot", bot, "--config", str(config)], puppet_env, tmp_path / "puppet.log", port
        )
        made.append(process)
        return process

    yield make
    for process in made:
        process.stop()


@pytest.fixture
def hub_puppet(make_puppet: Callable[..., PuppetProcess]) -> Callable[..., PuppetProcess]:
    """``hub_puppet(manager_url, bot, **top)``: :func:`make_puppet` registering with the manager at
    ``manager_url``, which POSTs the account's deliveries to the puppet's own port."""

    def make(manager: str, bot: str = "examples.echo:bot", **top: Any) -> PuppetProcess:
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        return make_puppet(bot, port=port, manager=manager, self_endpoint=endpoint, **top)

    return make


@dataclass
class Hosted:
    """A :class:`PuppetHost` serving in the test's own loop (for tests that look inside)."""

    host: PuppetHost
    url: str

    @property
    def account(self) -> Account:
        return self.host.accounts[0]


@pytest.fixture
async def hosted(
    db: Database, sim: tuple[str, SimState], corp: Corp
) -> AsyncIterator[Callable[..., Awaitable[Hosted]]]:
    """``await hosted(bot, **config)``: serve ``corp``'s account with ``bot`` in this process."""
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=30, trust_env=False))

        async def start(bot: Bot, *, callback: bool = True, **overrides: Any) -> Hosted:
            spec = AccountSpec(corp.corpid, corp.secret, corp.token, corp.aes_key, open_kfid=corp.kf)
            config = PuppetConfig(accounts=[spec], **overrides)
            host = PuppetHost(config, bot, db, http, sim[0] + "/cgi-bin")
            url = await stack.enter_async_context(serve_app(host.app()))
            stack.push_async_callback(host.stop)
            await host.start()
            if callback:
                await corp.set_callback(url + "/callback")
            return Hosted(host, url)

        yield start
