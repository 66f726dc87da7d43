"""The puppet's life with a manager (a real ``wxkf up``): the pull after each registration, the first one
included, and the stop order — finish what is being handled, then deregister.

Every puppet here has a safety-net pull interval of a day, so an answer within the test's bounded
waits can only come from the path under test, never from that net.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from simulator import SimConfig
from simulator.config import Rate
from simulator.state import SimState
from tests.puppets.conftest import SIM_CONFIG, Corp, PuppetProcess, wait_until
from tests.support.services import ServiceProcess, free_port, puppet_info, service_env
from wxkf.settings import Settings

NO_SAFETY_NET = 86400  # seconds: the configuration's maximum
ADMIN_TOKEN = "lifecycle-admin"


#: token-less pulls are counted (never refused): see :func:`tokenless_pulls`
COUNTED = SIM_CONFIG.model_copy(update={"sync_tokenless_rate": Rate(calls=100_000, seconds=3600)})


#: one token-less pull a day per account: the test spends it, so the puppet can pull only with a token
ONE_TOKENLESS_PULL = SIM_CONFIG.model_copy(update={"sync_tokenless_rate": Rate(calls=1, seconds=86400)})


@pytest.fixture
def sim_config() -> SimConfig:
    return COUNTED


def tokenless_pulls(sim: tuple[str, SimState], corp: Corp) -> int:
    """The token-less ``sync_msg`` calls the simulator has answered for the account (its rate-limit log:
    a call is counted in the same step that reads the messages, so a message said after this count
    rose is not in that pull's page)."""
    (window,) = sim[1].wecom.kf._tokenless.windows
    return len(window._hits.get((corp.corpid, corp.kf), ()))


@pytest.fixture
async def unstarted_hub(
    settings: Settings, tmp_path: Path, puppet_env: dict[str, str]
) -> AsyncIterator[ServiceProcess]:
    """A ``wxkf up`` on its own port, not started: each test starts it when it needs it."""
    env = service_env(
        settings,
        tmp_path / "hub",
        wecom_api_base=puppet_env["WECOM_API_BASE"],
        wxkf_admin_token=ADMIN_TOKEN,
    )
    process = ServiceProcess("up", env, tmp_path / "hub.log", free_port())
    yield process
    process.discard()


def in_log(process: PuppetProcess, text: str, times: int = 1) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return process.log().count(text) >= times

    return check


async def test_what_wecom_gave_up_on_before_the_first_registration_is_answered_when_it_succeeds(
    corp: Corp,
    sim: tuple[str, SimState],
    unstarted_hub: ServiceProcess,
    hub_puppet: Callable[..., PuppetProcess],
) -> None:
    hub = unstarted_hub
    await corp.set_callback(f"{hub.url}/callback/{corp.corpid}")
    puppet = hub_puppet(hub.url, safety_pull_interval=NO_SAFETY_NET)
    await assert_what_wecom_gave_up_on_first_is_answered(
        hub, corp, sim, puppet, failed="registration failed", serving="registered with the manager"
    )


async def assert_what_wecom_gave_up_on_first_is_answered(
    hub: ServiceProcess,
    corp: Corp,
    sim: tuple[str, SimState],
    puppet: PuppetProcess,
    *,
    failed: str,
    serving: str,
) -> None:
    """The puppet starts while the hub is down: its first registration fails (the log says ``failed``)
    and its start-up pull finds nothing; a message comes whose every callback WeCom then gives up on;
    once the hub is up and the puppet serves through it (the log says ``serving``), that message is
    answered — only the pull after the first registration can bring it. Any transport."""
    await puppet.start()
    await wait_until(in_log(puppet, failed), what="a failed first registration")

    async def pulled() -> bool:
        return tokenless_pulls(sim, corp) >= 1

    await wait_until(pulled, what="the start-up pull")
    await corp.says("before the hub was up", wait=True)  # every retry fails: WeCom gives up for good
    await hub.start()
    await wait_until(in_log(puppet, serving), timeout=90, what="the first registration")
    assert await corp.wait_received(1) == ["echo: before the hub was up"]


def lines_of(journal: Path) -> list[str]:
    return journal.read_text().splitlines() if journal.exists() else []


#: the bot of :func:`held_handler`
HELD = "tests.puppets.lifecycle_bots:held"


def held_handler(tmp_path: Path, puppet_env: dict[str, str]) -> tuple[Path, Path]:
    """The journal and the release fifo of ``tests.puppets.lifecycle_bots:held``, whose handler holds
    each message until the test writes to the fifo."""
    journal, release = tmp_path / "journal", tmp_path / "release"
    os.mkfifo(release)
    puppet_env |= {"PUPPET_TEST_JOURNAL": str(journal), "PUPPET_TEST_RELEASE": str(release)}
    return journal, release


async def assert_the_stop_finishes_then_leaves(
    hub: ServiceProcess, corp: Corp, puppet: PuppetProcess, journal: Path, release: Path, *, serving: str
) -> None:
    """With the hub up and WeCom calling it back, the held handler's ``puppet`` (not started yet)
    starts and serves (its log says ``serving``). SIGTERM while the handler runs: the puppet stays
    registered, refuses a delivery with a 503 (no pull starts any more; the manager's mailbox keeps
    it), lets the handler reply, deregisters and exits 0; the message of the drain is handled, once,
    after the restart. Any transport."""
    await hub.start()
    await corp.set_callback(f"{hub.url}/callback/{corp.corpid}")
    await puppet.start()
    await wait_until(in_log(puppet, serving), what="the puppet serving")
    await corp.says("hold on")

    async def started() -> bool:
        return "start hold on" in lines_of(journal)

    await wait_until(started, what="the handler to start")
    assert puppet.process is not None
    puppet.process.send_signal(signal.SIGTERM)
    await wait_until(in_log(puppet, "stopping:"), what="the stop to begin")
    assert (await puppet_info(hub, corp))["registered"] is True
    await corp.says("during the drain")
    await wait_until(in_log(puppet, "refused: stopping"), what="the delivery refused while stopping")
    assert (await puppet_info(hub, corp))["registered"] is True
    await asyncio.to_thread(release.write_text, "go")  # the handler replies and returns
    assert await asyncio.to_thread(puppet.process.wait, 60) == 0
    assert await corp.received() == ["echo: hold on"]  # the running handler's reply was sent
    assert lines_of(journal) == ["start hold on", "replied hold on"]
    assert "deregistered" in puppet.log()
    assert (await puppet_info(hub, corp))["registered"] is False
    await puppet.start()
    assert await corp.wait_received(2) == ["echo: hold on", "echo: during the drain"]
    assert lines_of(journal)[2] == "start during the drain"  # once, and only now


async def test_a_handler_running_at_sigterm_finishes_and_replies_before_the_puppet_deregisters(
    corp: Corp,
    unstarted_hub: ServiceProcess,
    hub_puppet: Callable[..., PuppetProcess],
    puppet_env: dict[str, str],
    tmp_path: Path,
) -> None:
    journal, release = held_handler(tmp_path, puppet_env)
    puppet = hub_puppet(unstarted_hub.url, HELD, safety_pull_interval=NO_SAFETY_NET)
    await assert_the_stop_finishes_then_leaves(
        unstarted_hub, corp, puppet, journal, release, serving="registered with the manager"
    )


@pytest.mark.parametrize("sim_config", [ONE_TOKENLESS_PULL], ids=["no-tokenless-pull-left"])
async def test_a_first_registration_brings_what_the_manager_kept_at_once_without_a_tokenless_pull(
    corp: Corp,
    sim: tuple[str, SimState],
    unstarted_hub: ServiceProcess,
    hub_puppet: Callable[..., PuppetProcess],
) -> None:
    hub = unstarted_hub
    token = await corp.http.get(
        f"{sim[0]}/cgi-bin/gettoken", params={"corpid": corp.corpid, "corpsecret": corp.secret}
    )
    spent = await corp.http.post(
        f"{sim[0]}/cgi-bin/kf/sync_msg",
        params={"access_token": token.json()["access_token"]},
        json={"open_kfid": corp.kf},
    )
    assert spent.json()["errcode"] == 0  # the day's one token-less pull: the puppet's are refused
    await hub.start()
    added = await corp.http.post(  # the hub knows the corp app before any puppet registered for it
        f"{hub.url}/admin/apps",
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        json={"corp_id": corp.corpid, "token": corp.token, "encoding_aes_key": corp.aes_key},
    )
    assert added.is_success, added.text
    await corp.set_callback(f"{hub.url}/callback/{corp.corpid}")
    await corp.says("before any puppet", wait=True)  # stored by the hub; no puppet to deliver it to
    puppet = hub_puppet(hub.url, safety_pull_interval=NO_SAFETY_NET)
    await puppet.start()
    # the puppet's token-less pull is refused (45009); the registration un-parks the account's mailbox
    # and its delivery brings a callback token, which cuts the puppet's backoff short
    assert await corp.wait_received(1) == ["echo: before any puppet"]
    assert "rate-limited (45009)" in puppet.log()
