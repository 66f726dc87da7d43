"""``wxkf puppet`` behind a real ``wxkf up``: registration, signed dispatch, forgeries refused, a clean stop,
and a hub outage longer than WeCom's retries."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from tests.puppets.conftest import Corp, PuppetProcess, wait_until
from tests.support.services import ServiceProcess, free_port, puppet_info, service_env
from tests.support.wecom_callbacks import CorpAppKeys, kf_event_xml, signed_post
from wxkf import webhooks
from wxkf.settings import Settings


@pytest.fixture
def hub_env() -> dict[str, str]:
    """More of the hub's settings (a test parametrizes it)."""
    return {}


@pytest.fixture
async def hub(
    settings: Settings, tmp_path: Path, puppet_env: dict[str, str], hub_env: dict[str, str]
) -> AsyncIterator[ServiceProcess]:
    env = service_env(
        settings,
        tmp_path / "hub",
        wecom_api_base=puppet_env["WECOM_API_BASE"],
        wxkf_token_invalidate_interval="0",  # a reported token is replaced at once, not 10 s later
        **hub_env,
    )
    process = ServiceProcess("up", env, tmp_path / "hub.log", free_port())
    await process.start()
    yield process
    process.discard()


async def registered(puppet: PuppetProcess, times: int = 1) -> bool:
    return puppet.log().count("registered with the manager") >= times


@pytest.fixture
async def echo_puppet(
    corp: Corp, hub: ServiceProcess, hub_puppet: Callable[..., PuppetProcess]
) -> PuppetProcess:
    """The echo bot's puppet, registered with the hub, which WeCom calls back."""
    await corp.set_callback(f"{hub.url}/callback/{corp.corpid}")
    puppet = hub_puppet(hub.url)
    await puppet.start()
    await wait_until(lambda: registered(puppet), what="registration")
    return puppet


async def test_echo_through_wxkf_up_then_a_clean_stop_deregisters(
    corp: Corp, hub: ServiceProcess, echo_puppet: PuppetProcess
) -> None:
    puppet = echo_puppet
    await corp.says("ding")
    assert await corp.wait_received(1) == ["echo: ding"]
    assert await puppet.terminate() == 0
    assert "deregistered" in puppet.log()
    assert (await puppet_info(hub, corp))["registered"] is False


async def test_a_forged_delivery_is_refused_when_the_puppet_holds_a_webhook_secret(
    corp: Corp, echo_puppet: PuppetProcess
) -> None:
    puppet = echo_puppet
    decrypted = f"{puppet.url}/callback/decrypted"
    body = b'{"token": "forged-token", "openKfId": "%s"}' % corp.kf.encode()
    someone_elses = webhooks.headers(webhooks.generate_secret(), "msg_forged", body)
    stale = webhooks.headers(webhooks.generate_secret(), "msg_old", body, timestamp=1)
    # WeCom's own signature is valid, but the XML did not come through the manager
    query, xml = signed_post(
        CorpAppKeys(corp.corpid, corp.token, corp.aes_key), kf_event_xml(corp.corpid, corp.kf, "t")
    )
    async with httpx.AsyncClient() as http:
        answers = [
            await http.post(decrypted, content=body, headers={"content-type": "application/json"}),
            await http.post(decrypted, content=body, headers=someone_elses),
            await http.post(decrypted, content=body, headers=stale),
            await http.post(f"{puppet.url}/callback?{query}", content=xml),
        ]
    assert [answer.status_code for answer in answers] == [401, 401, 401, 401]
    assert all(answer.text == "bad_webhook_signature" for answer in answers)
    assert puppet.log().count("callback refused: bad_webhook_signature") == 4
    assert "forged-token" not in puppet.log()
    # and the real thing still works
    await corp.says("ding")
    assert await corp.wait_received(1) == ["echo: ding"]


async def test_a_hub_down_longer_than_wecoms_retries_loses_nothing(
    corp: Corp, hub: ServiceProcess, hub_puppet: Callable[..., PuppetProcess]
) -> None:
    await corp.set_callback(f"{hub.url}/callback/{corp.corpid}")
    # no safety-net pull for a day: the answer can only come from the catch-up
    puppet = hub_puppet(hub.url, heartbeat_interval=0.5, safety_pull_interval=86400)
    await puppet.start()
    await wait_until(lambda: registered(puppet), what="registration")
    hub.kill()
    await corp.says("while the hub is down", wait=True)  # every retry fails: WeCom gives up
    await hub.start()
    # the puppet notices the outage (heartbeat refused), registers again and pulls without a token
    await wait_until(lambda: registered(puppet, 2), what="re-registration")
    assert await corp.wait_received(1) == ["echo: while the hub is down"]
    assert puppet.process is not None
    puppet.process.send_signal(signal.SIGTERM)


async def test_a_token_wecom_revoked_early_is_reported_to_the_hub_and_replaced(
    corp: Corp, echo_puppet: PuppetProcess
) -> None:
    await corp.says("first")
    assert await corp.wait_received(1) == ["echo: first"]
    revoked = await corp.http.post(f"{corp.sim_url}/sim/tokens/invalidate", json={"corpid": corp.corpid})
    assert revoked.json()["invalidated"] >= 1  # the hub still caches the revoked token
    await corp.says("second")
    assert await corp.wait_received(2) == ["echo: first", "echo: second"]


@pytest.mark.parametrize("hub_env", [{"wxkf_registration_token": "let-me-in"}])
async def test_a_hub_that_requires_a_registration_token_gets_it_from_the_config(
    corp: Corp, hub: ServiceProcess, hub_puppet: Callable[..., PuppetProcess], puppet_env: dict[str, str]
) -> None:
    without = hub_puppet(hub.url)
    await without.start()
    await wait_until(lambda: _contains(without, "registration failed"), what="a refusal")
    assert "registration token missing or wrong" in without.log()
    without.stop()
    puppet_env["HUB_REGISTRATION_TOKEN"] = "let-me-in"
    puppet = hub_puppet(hub.url, registration_token={"env": "HUB_REGISTRATION_TOKEN"})
    await puppet.start()
    await wait_until(lambda: registered(puppet), what="registration")


async def _contains(puppet: PuppetProcess, text: str) -> bool:
    return text in puppet.log()
