# ruff: noqa: F811 - the puppets' fixtures are imported by name and then requested by name
"""A real ``wxkf up`` (restartable on its port), the simulator as WeCom, and a raw socket client.

The simulator, its corp and ``wxkf puppet`` as a child process come from the puppets' fixtures.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from simulator.state import SimState
from tests.puppets.conftest import (  # noqa: F401 - fixtures
    Corp,
    PuppetProcess,
    corp,
    hosted,
    make_puppet,
    puppet_env,
    sim,
    sim_config,
    toml_value,
)
from tests.support.corp import corp_spec, create_corp
from tests.support.services import ServiceProcess, free_port, service_env
from wxkf.settings import Settings

WS_PATH = "/puppetWxkfManager/ws"


@pytest.fixture
async def hub(
    settings: Settings, tmp_path: Path, puppet_env: dict[str, str]
) -> AsyncIterator[ServiceProcess]:
    """``python -m hub up`` on the test's database, WeCom being the simulator."""
    env = service_env(settings, tmp_path / "hub", wecom_api_base=puppet_env["WECOM_API_BASE"])
    process = ServiceProcess("up", env, tmp_path / "hub.log", free_port())
    await process.start()
    yield process
    process.discard()


def hub_log(hub: ServiceProcess) -> str:
    return hub.log_path.read_text(errors="replace")


@pytest.fixture
async def other_corp(corp: Corp, sim: tuple[str, SimState]) -> tuple[Corp, Corp]:
    """Another corp whose one app has two accounts: ``(wkSUPPORT, wkSALES)``."""
    del sim
    spec = corp_spec(
        [{"open_kfid": "wkSUPPORT", "name": "Support"}, {"open_kfid": "wkSALES", "name": "Sales"}],
        aes_key=corp.aes_key,
    )
    made = await create_corp(corp.http, corp.sim_url, spec)
    keys = (corp.sim_url, corp.http, made.corpid, made.secret, made.token, made.aes_key)
    return Corp(*keys, "wkSUPPORT"), Corp(*keys, "wkSALES", "wmCAROL")


def accounts_toml(port: int, manager: str, accounts: list[Corp], **top: Any) -> str:
    """A puppets.toml serving ``accounts`` (those of one corpid share an app) over the socket."""
    lines = [f"port = {port}", f'manager = "{manager}"', 'transport = "ws"']
    lines += [f"{key} = {toml_value(value)}" for key, value in top.items()]
    by_corp: dict[str, list[Corp]] = {}
    for account in accounts:
        by_corp.setdefault(account.corpid, []).append(account)
    for corpid, same in by_corp.items():
        lines += [
            "[[apps]]",
            f'corp_id = "{corpid}"',
            f'secret = "{same[0].secret}"',
            f'token = "{same[0].token}"',
            f'encoding_aes_key = "{same[0].aes_key}"',
            f"accounts = {json.dumps([account.kf for account in same])}",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def socket_puppet(
    tmp_path: Path, puppet_env: dict[str, str], make_puppet: Callable[..., PuppetProcess]
) -> Callable[..., PuppetProcess]:
    """``socket_puppet(hub, [accounts], bot)``: ``wxkf puppet --transport ws`` serving them (default bot:
    the echo bot)."""

    def make(
        hub: ServiceProcess, accounts: list[Corp], bot: str = "examples.echo:bot", **top: Any
    ) -> PuppetProcess:
        port = free_port()
        config = tmp_path / f"socket-puppet-{port}.toml"
        config.write_text(accounts_toml(port, hub.url, accounts, **top))
        process = make_puppet()  # registered for cleanup; its arguments are replaced below
        process.args = ["--bot", bot, "--config", str(config), "--transport", "ws"]
        process.port = port
        return process

    return make


@dataclass
class RawSocket:
    """A hand-written client of the socket protocol, to test the manager's side frame by frame."""

    ws: ClientConnection
    ids: int = 0

    async def send(self, frame: dict[str, Any]) -> str:
        self.ids += 1
        frame_id = frame.setdefault("id", str(self.ids))
        await self.ws.send(json.dumps(frame))
        return str(frame_id)

    async def receive(self, timeout: float = 20.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            frame: dict[str, Any] = json.loads(await self.ws.recv())
        return frame

    async def register(self, corp: Corp) -> dict[str, Any]:
        await self.send(
            {
                "type": "auth",
                "corpId": corp.corpid,
                "kfId": corp.kf,
                "corpSecret": corp.secret,
                "token": corp.token,
                "encodingAESKey": corp.aes_key,
            }
        )
        return await self.receive()

    async def closed(self, timeout: float = 20.0) -> tuple[int | None, str]:
        """Wait for the manager to close the connection; its close code and reason."""
        async with asyncio.timeout(timeout):
            await self.ws.wait_closed()
        received = self.ws.protocol.close_rcvd
        return (received.code, received.reason) if received is not None else (None, "")


@pytest.fixture
async def raw_socket(hub: ServiceProcess) -> AsyncIterator[Callable[[], Any]]:
    """``async with raw_socket() as client``: a fresh connection to the hub's socket route."""

    @asynccontextmanager
    async def open_one() -> AsyncIterator[RawSocket]:
        async with connect(f"ws://127.0.0.1:{hub.port}{WS_PATH}", open_timeout=10) as ws:
            yield RawSocket(ws)

    yield open_one
