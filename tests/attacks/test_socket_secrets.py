"""Secrets never reach the logs of the socket transport: a real ``wxkf up`` and ``wxkf puppet
--transport ws`` at DEBUG level (where the WebSocket library logs the frames it sends and receives),
registering over the socket, answering a customer, reconnecting after the hub restarts (the resume
proof carries the webhookSecret), then both logs searched for any 12 characters of each secret."""

from __future__ import annotations

import re
import secrets as secrets_module
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.puppets.conftest import (
    Corp,
    PuppetProcess,
    corp,
    make_puppet,
    puppet_env,
    sim,
    sim_config,
    wait_until,
)
from tests.sockets.conftest import socket_puppet
from tests.support.services import ServiceProcess, free_port, service_env
from wxkf.settings import Settings

__all__ = ["corp", "make_puppet", "puppet_env", "sim", "sim_config", "socket_puppet"]


def pieces(secret: str, size: int = 12) -> set[str]:
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


def leaks(log: str, secrets: dict[str, str]) -> list[str]:
    found = [name for name, secret in secrets.items() if any(piece in log for piece in pieces(secret))]
    # a webhookSecret is never known to the test, but its form is; and the WebSocket library's DEBUG
    # lines show a frame's first and last characters, which is where a resume proof's secret sits
    if re.search(r"whsec_[A-Za-z0-9+/=]{8}", log):
        found.append("a webhookSecret")
    if re.search(r"[<>] TEXT '", log):
        found.append("a frame's content")
    return found


@pytest.fixture
def debug_env(puppet_env: dict[str, str]) -> dict[str, str]:
    puppet_env["WXKF_LOG_LEVEL"] = "DEBUG"
    return puppet_env


async def test_no_secret_of_the_socket_transport_reaches_a_log_at_debug(
    corp: Corp,
    settings: Settings,
    tmp_path: Path,
    debug_env: dict[str, str],
    socket_puppet: Callable[..., PuppetProcess],
) -> None:
    registration = "rt-" + secrets_module.token_hex(16)
    env = service_env(
        settings,
        tmp_path / "hub",
        wecom_api_base=debug_env["WECOM_API_BASE"],
        wxkf_log_level="DEBUG",
        wxkf_registration_token=registration,
    )
    hub = ServiceProcess("up", env, tmp_path / "hub.log", free_port())
    await hub.start()
    try:
        await corp.set_callback(f"{hub.url}/callback/{corp.corpid}")
        puppet = socket_puppet(hub, [corp], registration_token=registration)
        await puppet.start()
        await corp.says("ding")
        assert await corp.wait_received(1) == ["echo: ding"]
        hub.stop()
        await hub.start()  # the puppet resumes with its webhookSecret
        await wait_until(
            lambda: _async(puppet.log().count("resumed over the manager's socket") >= 1), 60, "the resume"
        )
        await corp.says("dong")
        assert await corp.wait_received(2) == ["echo: ding", "echo: dong"]
        assert await puppet.terminate() == 0
    finally:
        hub.stop()
    secrets = {
        "corpSecret": corp.secret,
        "Token": corp.token,
        "EncodingAESKey": corp.aes_key,
        "registration token": registration,
    }
    hub_log = hub.log_path.read_text(errors="replace")
    assert "DEBUG" in hub_log and "DEBUG" in puppet.log()
    assert leaks(puppet.log(), secrets) == []
    assert leaks(hub_log, secrets) == []


async def _async(value: bool) -> bool:
    return value
