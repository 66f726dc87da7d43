"""Issue 3's acceptance flow against the simulator: register the corp app, pass WeCom's URL
verification, and let a customer message flow through the gateway to a stand-in manager, which then
pulls the message with the forwarded token."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import gateway_app
from simulator import SimConfig, create_app
from simulator.clock import OffsetClock
from simulator.state import SimState
from tests.gateway.conftest import ADMIN, make_gateway
from tests.support.recorder import Recorder
from tests.support.servers import serve_app
from tests.support.wecom_callbacks import new_aes_key
from wecom.client import WeComClient, fetch_access_token
from wecom.http import WeComHttp
from wecom.tokens import GetTokenProvider
from wxkf.runtime import Runtime


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    state = SimState(
        clock=OffsetClock(), config=SimConfig(callback_timeout=2.0, callback_retry_delays=(0.0,))
    )
    async with serve_app(create_app(state), lifespan="on") as url:
        yield url


async def test_customer_message_flows_through_the_gateway(
    runtime: Runtime, listener: tuple[Recorder, str], sim_url: str
) -> None:
    recorder, manager_url = listener
    gateway = make_gateway(runtime, manager_url)
    await gateway.start()
    try:
        async with (
            serve_app(gateway_app(gateway, ADMIN)) as gateway_url,
            httpx.AsyncClient(timeout=30) as http,
            WeComHttp() as wecom,
        ):
            corpid = "ww" + secrets.token_hex(8)
            app = {
                "name": "kf",
                "agentid": 1000002,
                "secret": secrets.token_hex(16),
                "token": secrets.token_hex(8),
                "encoding_aes_key": new_aes_key(),
            }
            spec = {
                "corpid": corpid,
                "apps": [app],
                "accounts": [{"open_kfid": "wkSIM"}],
                "customers": [{"external_userid": "wmSIM"}],
            }
            assert (await http.post(f"{sim_url}/sim/corps", json=spec)).status_code == 201
            # 1. register the corp app with the gateway (as `wxkf corp add` does)
            added = await http.post(
                f"{gateway_url}/admin/apps",
                headers={"authorization": f"Bearer {ADMIN}"},
                json={"corp_id": corpid, "token": app["token"], "encoding_aes_key": app["encoding_aes_key"]},
            )
            assert added.status_code == 201, added.text
            # 2. point the app's callback URL at the gateway and let WeCom verify it
            app_url = f"{sim_url}/sim/corps/{corpid}/apps/1000002"
            await http.patch(app_url, json={"callback_url": f"{gateway_url}/callback/{corpid}"})
            verified = (await http.post(app_url + "/verify")).json()
            assert verified["ok"] is True, verified
            # 3. a customer writes; WeCom's encrypted callback reaches the gateway, then the listener
            sent = await http.post(
                f"{sim_url}/sim/corps/{corpid}/accounts/wkSIM/messages",
                params={"wait": "true"},
                json={"external_userid": "wmSIM", "msgtype": "text", "text": {"content": "hello gateway"}},
            )
            assert sent.status_code in (200, 201), sent.text
            [delivery] = await recorder.wait_for(1)
            forwarded = json.loads(delivery["body"])
            assert forwarded["openKfId"] == "wkSIM"

            # 4. the forwarded token pulls the message from WeCom
            async def fetch():  # type: ignore[no-untyped-def]
                return await fetch_access_token(wecom, sim_url + "/cgi-bin", corpid, app["secret"])

            client = WeComClient(wecom, sim_url + "/cgi-bin", GetTokenProvider(fetch))
            result = await client.kf_sync_msg("wkSIM", token=forwarded["token"])
            assert [m.body.get("content") for m in result.msg_list] == ["hello gateway"]
    finally:
        await gateway.stop()
