"""Secrets never appear in logs or answers: a real ``wxkf up`` at DEBUG level, driven through every
route that handles one (register, getToken right and wrong, the request proxy, heartbeat, deregister,
callbacks, wrong admin and gateway tokens), then its whole log searched for each secret."""

from __future__ import annotations

from pathlib import Path

import httpx

from simulator.state import SimState
from tests.manager.test_compat_e2e import World, make_corp, simulator
from tests.support.servers import serve_app
from tests.support.services import ServiceProcess, free_port, service_env
from wxkf.settings import Settings

__all__ = ["simulator"]
ADMIN = "admin-token-that-must-stay-secret"
GATEWAY = "gateway-token-that-must-stay-secret"


async def test_no_secret_reaches_the_log_or_a_stranger(
    settings: Settings, simulator: tuple[str, SimState], tmp_path: Path
) -> None:
    sim_url, _ = simulator
    env = service_env(
        settings,
        tmp_path / "data",
        wxkf_admin_token=ADMIN,
        wxkf_gateway_token=GATEWAY,
        wxkf_log_level="DEBUG",
        wecom_api_base=sim_url + "/cgi-bin",
    )
    hub = ServiceProcess("up", env, tmp_path / "hub.log", free_port())
    await hub.start()
    answers: list[str] = []
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            corp = await make_corp(http, sim_url, hub.url + "/callback/{corpid}")
            world = World(sim_url, hub.url, http, SimState(), None, **corp)
            puppet = world.puppet()
            async with serve_app(puppet.app()) as puppet_url:
                registered = await puppet.register(hub.url, puppet_url)
                webhook_secret = registered.json()["webhookSecret"]
                await world.customer_says("hello")
                await puppet.wait_for_texts(1)
                get_token = f"{hub.url}/puppetWxkfManager/getToken"
                issued = await http.get(
                    get_token, params={"corpid": world.corpid, "corpsecret": world.secret}
                )
                access_token = issued.json()["access_token"]
                for attempt in (
                    http.get(get_token, params={"corpid": world.corpid, "corpsecret": world.secret + "x"}),
                    http.post(
                        f"{hub.url}/puppetWxkfManager/wxkfRequestProxy/kf/account/list",
                        params={"corpid": world.corpid, "kfid": world.kf, "access_token": "caller-supplied"},
                        headers={"authorization": f"Bearer {webhook_secret}"},
                        json={"offset": 0, "limit": 100},
                    ),
                    http.post(
                        f"{hub.url}/puppetWxkfManager/heartbeat",
                        headers={"authorization": f"Bearer {webhook_secret}x"},
                        json={"corpId": world.corpid, "kfId": world.kf},
                    ),
                    http.get(f"{hub.url}/admin/apps", headers={"authorization": f"Bearer {ADMIN}x"}),
                    http.post(
                        f"{hub.url}/callback/decrypted/{world.corpid}",
                        headers={"authorization": f"Bearer {GATEWAY}x"},
                        json={"token": "t", "openKfId": world.kf},
                    ),
                    http.get(
                        f"{hub.url}/puppetWxkfManager/puppetWxkfInfo/{world.kf}",
                        headers={"authorization": f"Bearer {ADMIN}"},
                    ),
                    http.post(
                        f"{hub.url}/puppetWxkfManager/deregister",
                        headers={"authorization": f"Bearer {webhook_secret}"},
                        json={"corpId": world.corpid, "kfId": world.kf},
                    ),
                ):
                    answers.append((await attempt).text)
    finally:
        hub.stop()
    log = (tmp_path / "hub.log").read_text()
    assert "DEBUG" in log  # the level that logs the most
    secrets = {
        "corpSecret": world.secret,
        "callback token": world.token,
        "EncodingAESKey": world.aes_key,
        "webhookSecret": webhook_secret,
        "access token": access_token,
        "admin token": ADMIN,
        "gateway token": GATEWAY,
    }
    leaked = {name for name, value in secrets.items() if value in log}
    assert leaked == set(), f"in the log: {leaked}"
    # the routes answered what they should (so the log above holds their work)
    assert answers[0].startswith('{"errcode":40001') and answers[1].startswith('{"errcode":0')
    shown = {name for name, value in secrets.items() for answer in answers if value in answer}
    assert shown == set(), f"in an answer: {shown}"
