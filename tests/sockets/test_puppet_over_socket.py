"""``wxkf puppet --transport ws`` behind a real ``wxkf up``: no callback URL, one socket for every account."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from tests.puppets.conftest import Corp, PuppetProcess, wait_until
from tests.sockets.conftest import hub_log
from tests.support.services import ServiceProcess, puppet_info


def proofs(puppet: PuppetProcess, word: str = "registered") -> int:
    return puppet.log().count(f"{word} over the manager's socket")


def connections(puppet: PuppetProcess) -> int:
    return puppet.log().count("connected to the manager's socket")


@pytest.fixture
async def echo_puppet(
    corp: Corp, hub: ServiceProcess, socket_puppet: Callable[..., PuppetProcess]
) -> PuppetProcess:
    """The echo bot's puppet, proven over the hub's socket for ``corp``, which WeCom calls back (at the
    hub)."""
    await corp.set_callback(f"{hub.url}/callback/{corp.corpid}")
    puppet = socket_puppet(hub, [corp])
    await puppet.start()
    await wait_until(lambda: _async(proofs(puppet) == 1), what="the proof over the socket")
    return puppet


async def test_echo_over_the_socket_then_a_clean_stop_deregisters(
    corp: Corp, hub: ServiceProcess, echo_puppet: PuppetProcess
) -> None:
    puppet = echo_puppet
    await corp.says("ding")
    assert await corp.wait_received(1) == ["echo: ding"]
    assert "registered puppet for" in hub_log(hub)
    async with httpx.AsyncClient() as http:  # deliveries come only over the socket: no callback route
        forged = await http.post(f"{puppet.url}/callback/decrypted", json={"token": "t", "openKfId": corp.kf})
        assert forged.status_code == 404
        assert (await http.get(f"{puppet.url}/healthz")).status_code == 200
    assert await puppet.terminate() == 0
    assert "deregistered" in puppet.log()
    assert (await puppet_info(hub, corp))["registered"] is False


async def test_one_connection_carries_accounts_of_several_corps(
    corp: Corp,
    other_corp: tuple[Corp, Corp],
    hub: ServiceProcess,
    socket_puppet: Callable[..., PuppetProcess],
) -> None:
    support, sales = other_corp
    accounts = [corp, support, sales]
    for account in accounts:
        await account.set_callback(f"{hub.url}/callback/{account.corpid}")
    puppet = socket_puppet(hub, accounts)
    await puppet.start()
    await wait_until(lambda: _async(proofs(puppet) == 3), what="three proofs")
    await corp.says("one")
    await support.says("two")
    await sales.says("three")
    assert await corp.wait_received(1) == ["echo: one"]
    assert await support.wait_received(1) == ["echo: two"]
    assert await sales.wait_received(1) == ["echo: three"]
    assert connections(puppet) == 1


async def test_the_puppet_reconnects_after_the_hub_restarts_and_loses_nothing(
    corp: Corp, hub: ServiceProcess, echo_puppet: PuppetProcess
) -> None:
    puppet = echo_puppet
    await corp.says("before")
    assert await corp.wait_received(1) == ["echo: before"]
    hub.kill()
    # every callback retry fails while the hub is down: WeCom gives up on these for good
    for text in ("while down 1", "while down 2", "while down 3"):
        await corp.says(text, wait=True)
    await wait_until(lambda: _async("reconnecting in" in puppet.log()), what="a reconnection backoff")
    await hub.start()
    # the puppet connects again, proves the account with its webhookSecret and catches up
    await wait_until(lambda: _async(proofs(puppet, "resumed") == 1), timeout=60, what="the resumed proof")
    assert connections(puppet) >= 2
    await corp.says("after")
    assert await corp.wait_received(5) == [
        "echo: before",
        "echo: while down 1",
        "echo: while down 2",
        "echo: while down 3",
        "echo: after",
    ]


async def _async(value: bool) -> bool:
    return value


async def test_a_hub_stopped_with_sigterm_exits_cleanly_with_a_socket_open_and_the_puppet_resumes(
    corp: Corp, hub: ServiceProcess, echo_puppet: PuppetProcess
) -> None:
    puppet = echo_puppet
    assert hub.process is not None
    hub.process.terminate()
    assert await asyncio.to_thread(hub.process.wait, 30) == 0
    assert "Traceback" not in hub_log(hub)
    await wait_until(lambda: _async("reconnecting in" in puppet.log()), what="the puppet noticing")
    await hub.start()
    await wait_until(lambda: _async(proofs(puppet, "resumed") == 1), timeout=60, what="the resumed proof")
    await corp.says("after")
    assert await corp.wait_received(1) == ["echo: after"]
