"""A simulator as WeCom on a real socket, a corp in it, and ``wxkf puppet`` as a real child process.

The simulator runs in the test's event loop on real time (an :class:`OffsetClock`), because the
puppet is another process that reads no fake clock. Token-less pulls are not rate-limited unless a
test asks, so start-up catch-ups are immediate; callbacks are retried quickly.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
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
from tests.support.servers import serve_app
from tests.support.services import free_port
from tests.support.wecom_callbacks import new_aes_key
from wxkf.database import Database
from wxkf.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SIM_CONFIG = SimConfig(callback_timeout=2.0, callback_retry_delays=(0.2, 0.2, 0.2), sync_tokenless_rate=None)


async def wait_until(
    check: Callable[[], Awaitable[Any]], timeout: float = 30.0, what: str = "condition"
) -> Any:
    """Poll ``check`` until it returns something truthy: the state lives in other processes, which
    offer no event to wait on."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last: {result!r}")
        await asyncio.sleep(0.05)


def toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)  # strings, numbers and booleans are spelled alike


@dataclass
class Corp:
    """A simulated corp: one app (``secret``, ``token``, ``aes_key``), account ``wkSUPPORT``."""

    sim_url: str
    http: httpx.AsyncClient
    corpid: str
    secret: str
    token: str
    aes_key: str
    kf: str = "wkSUPPORT"
    customer: str = "wmBOB"

    def control(self, path: str) -> str:
        return f"{self.sim_url}/sim/corps/{self.corpid}{path}"

    async def set_callback(self, url: str | None) -> None:
        response = await self.http.patch(self.control("/apps/1000002"), json={"callback_url": url})
        assert response.status_code == 200, response.text

    async def says(self, text: str, customer: str | None = None, *, wait: bool = False) -> None:
        response = await self.http.post(
            self.control(f"/accounts/{self.kf}/messages"),
            params={"wait": "true"} if wait else None,
            json={"external_userid": customer or self.customer, "msgtype": "text", "text": {"content": text}},
        )
        assert response.is_success, response.text

    async def received(self, customer: str | None = None) -> list[str]:
        """The texts the customer received, oldest first."""
        response = await self.http.get(self.control(f"/customers/{customer or self.customer}/received"))
        assert response.is_success, response.text
        return [item["text"]["content"] for item in response.json()["messages"] if item["msgtype"] == "text"]

    async def wait_received(
        self, count: int, customer: str | None = None, timeout: float = 30.0
    ) -> list[str]:
        async def enough() -> list[str] | None:
            texts = await self.received(customer)
            return texts if len(texts) >= count else None

        result: list[str] = await wait_until(enough, timeout, f"{count} replies")
        return result

    def config_toml(self, port: int, **top: Any) -> str:
        lines = [f"port = {port}"]
        lines += [f"{key} = {toml_value(value)}" for key, value in top.items()]
        lines += [
            "[[apps]]",
            f'corp_id = "{self.corpid}"',
            'secret = { env = "TEST_KF_SECRET" }',
            f'token = "{self.token}"',
            f'encoding_aes_key = "{self.aes_key}"',
            f'accounts = ["{self.kf}"]',
        ]
        return "\n".join(lines) + "\n"


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
        corpid = "ww" + secrets.token_hex(8)
        spec = {
            "corpid": corpid,
            "apps": [
                {
                    "name": "kf",
                    "agentid": 1000002,
                    "secret": "s-" + secrets.token_hex(16),
                    "token": secrets.token_hex(8),
                    "encoding_aes_key": new_aes_key(),
                }
            ],
            "accounts": [{"open_kfid": "wkSUPPORT", "name": "Support"}],
            "customers": [{"external_userid": "wmBOB"}, {"external_userid": "wmCAROL"}],
        }
        created = await http.post(f"{sim_url}/sim/corps", json=spec)
        assert created.status_code == 201, created.text
        app = created.json()["apps"][0]
        yield Corp(sim_url, http, corpid, app["secret"], app["token"], app["encoding_aes_key"])


@dataclass
class PuppetProcess:
    """``python -m hub puppet --bot ... --config ...`` in the repository, its log in ``log_path``."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    port: int
    process: subprocess.Popen[bytes] | None = field(default=None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hub", "puppet", *self.args],
                env={**os.environ, **self.env},
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def start(self, ready: str = "puppet listening", timeout: float = 30.0) -> None:
        """Spawn and wait for the log line saying every account is being served."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.spawn()

        async def started() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"the puppet exited early:\n{self.log()[-3000:]}")
            return ready in self.log_path.read_text(errors="replace")[offset:]

        await wait_until(started, timeout, "the puppet to start")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    async def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit without blocking the loop (the simulator runs in it)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.process.wait, timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def puppet_env(settings: Settings, tmp_path: Path, sim: tuple[str, SimState], corp: Corp) -> dict[str, str]:
    """The child's environment: the test's database, the simulator as WeCom, the app secret."""
    assert settings.mongo_uri is not None
    return {
        "MONGO_URI": settings.mongo_uri,
        "WXKF_DB_NAME": settings.wxkf_db_name,
        "WECOM_API_BASE": sim[0] + "/cgi-bin",
        "TEST_KF_SECRET": corp.secret,
        "WXKF_LOG_LEVEL": "INFO",
        "PYTHONPATH": str(REPO),
    }


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
