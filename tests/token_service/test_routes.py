"""The token service over HTTP in WeCom's own response shape, with the simulator as upstream."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import AnyHttpUrl

from simulator import SimConfig, create_app
from simulator.clock import OffsetClock
from simulator.state import SimState
from tests.support.servers import serve_app
from tests.support.wecom_callbacks import new_aes_key
from token_service.app import build_token_service, token_app
from token_service.service import TokenService
from wxkf.runtime import open_runtime
from wxkf.settings import Settings

Served = tuple[str, str, httpx.AsyncClient, dict[str, str], TokenService]


@pytest.fixture
async def service(
    settings: Settings,
) -> AsyncIterator[tuple[str, str, httpx.AsyncClient, dict[str, str], TokenService]]:
    state = SimState(clock=OffsetClock(), config=SimConfig())
    async with serve_app(create_app(state), lifespan="on") as sim_url, httpx.AsyncClient() as http:
        corpid = "ww" + secrets.token_hex(8)
        app = {
            "agentid": 1000002,
            "secret": secrets.token_hex(16),
            "token": "t",
            "encoding_aes_key": new_aes_key(),
        }
        assert (
            await http.post(f"{sim_url}/sim/corps", json={"corpid": corpid, "apps": [app]})
        ).status_code == 201
        configured = settings.model_copy(
            update={"wecom_api_base": AnyHttpUrl(sim_url + "/cgi-bin"), "wxkf_token_invalidate_interval": 0.0}
        )
        async with open_runtime(configured) as runtime:
            tokens = build_token_service(runtime)
            await tokens.store.ensure_indexes()
            async with serve_app(token_app(tokens)) as url:
                yield url, sim_url, http, {"corpid": corpid, "corpsecret": app["secret"]}, tokens


async def test_gettoken_answers_in_wecoms_shape_and_caches(service) -> None:
    url, sim_url, http, creds, _ = service
    answers = [(await http.get(f"{url}/cgi-bin/gettoken", params=creds)).json() for _ in range(10)]
    assert {a["errcode"] for a in answers} == {0}
    assert {a["errmsg"] for a in answers} == {"ok"}
    assert len({a["access_token"] for a in answers}) == 1
    assert all(7000 < a["expires_in"] <= 7200 for a in answers)
    app = (await http.get(f"{sim_url}/sim/corps/{creds['corpid']}/apps/1000002")).json()
    assert app["gettoken_calls"] == 1


async def test_missing_and_wrong_credentials_get_wecom_errors(service) -> None:
    url, _, http, creds, _ = service
    assert (await http.get(f"{url}/cgi-bin/gettoken", params={"corpsecret": "x"})).json()["errcode"] == 41002
    assert (await http.get(f"{url}/cgi-bin/gettoken", params={"corpid": "ww1"})).json()["errcode"] == 41004
    wrong = (await http.get(f"{url}/cgi-bin/gettoken", params={**creds, "corpsecret": "nope"})).json()
    assert wrong["errcode"] == 40001
    assert "access_token" not in wrong


async def test_invalidate_after_wecom_revoked_the_token(service) -> None:
    url, sim_url, http, creds, _ = service
    first = (await http.get(f"{url}/cgi-bin/gettoken", params=creds)).json()["access_token"]
    revoked = await http.post(f"{sim_url}/sim/tokens/invalidate", json={"access_token": first})
    assert revoked.status_code == 200, revoked.text
    body = {**creds, "access_token": first}
    refreshed = (await http.post(f"{url}/token/invalidate", json=body)).json()
    assert refreshed["errcode"] == 0
    assert refreshed["access_token"] != first
    # the new token works upstream
    check = await http.post(
        f"{sim_url}/cgi-bin/kf/account/list",
        params={"access_token": refreshed["access_token"]},
        json={"limit": 10},
    )
    assert check.json()["errcode"] == 0
    bad = await http.post(f"{url}/token/invalidate", json={"corpid": creds["corpid"]})
    assert bad.status_code == 400


async def test_random_credentials_cost_bounded_upstream_calls_and_leave_nothing(service) -> None:
    """Issue 10, item 4, over HTTP: 50 random secrets, 200 random corpids and 30 invalidations with
    random secrets from one address. The simulator counts every gettoken it gets, refused or not."""
    url, sim_url, http, creds, tokens = service
    proven = (await http.get(f"{url}/cgi-bin/gettoken", params=creds)).json()["access_token"]
    before = (await http.get(f"{sim_url}/sim/tokens")).json()
    answers = [
        await http.get(f"{url}/cgi-bin/gettoken", params={**creds, "corpsecret": secrets.token_hex(16)})
        for _ in range(50)
    ]
    answers += [
        await http.get(
            f"{url}/cgi-bin/gettoken",
            params={"corpid": "ww" + secrets.token_hex(8), "corpsecret": secrets.token_hex(16)},
        )
        for _ in range(200)
    ]
    answers += [
        await http.post(
            f"{url}/token/invalidate",
            json={**creds, "corpsecret": secrets.token_hex(16), "access_token": "x" * 32},
        )
        for _ in range(30)
    ]
    after = (await http.get(f"{sim_url}/sim/tokens")).json()
    # the address's budget: 10 upstream calls, the first spent proving the legitimate pair
    assert after["requests"] - before["requests"] == tokens.policy.caller_burst - 1 == 9
    assert {answer.status_code for answer in answers} == {200}  # as WeCom answers, clients read errcode
    errcodes = [answer.json()["errcode"] for answer in answers]
    assert set(errcodes) == {40001, 45009}
    over = [answer for answer in answers if answer.json()["errcode"] == 45009]
    assert len(over) == len(answers) - 9
    assert all(int(answer.headers["retry-after"]) >= 1 for answer in over)
    assert "retry in" in over[0].json()["errmsg"]
    assert await tokens.store.count() == 1  # the proven pair's document, no other
    # the legitimate caller at the same address is still served, and renewed when WeCom revokes
    same = (await http.get(f"{url}/cgi-bin/gettoken", params=creds)).json()
    assert same["access_token"] == proven
    await http.post(f"{sim_url}/sim/tokens/invalidate", json={"access_token": proven})
    renewed = (await http.post(f"{url}/token/invalidate", json={**creds, "access_token": proven})).json()
    assert renewed["errcode"] == 0 and renewed["access_token"] != proven


async def test_malformed_credentials_are_refused_locally(service) -> None:
    url, sim_url, http, creds, _ = service
    before = (await http.get(f"{sim_url}/sim/tokens")).json()["requests"]
    for corpid, errcode in (("ww1\nFAKE log line", 40013), ("ww 1", 40013), ("w" * 65, 40013)):
        answer = await http.get(f"{url}/cgi-bin/gettoken", params={"corpid": corpid, "corpsecret": "s"})
        assert (answer.status_code, answer.json()["errcode"]) == (200, errcode)
    for secret in ("has space", "tab\tinside", "é", "x" * 257):
        answer = await http.get(f"{url}/cgi-bin/gettoken", params={**creds, "corpsecret": secret})
        assert answer.json()["errcode"] == 40001
    body = {**creds, "corpid": "ww\r\n", "access_token": "t"}
    assert (await http.post(f"{url}/token/invalidate", json=body)).json()["errcode"] == 40013
    assert (await http.get(f"{sim_url}/sim/tokens")).json()["requests"] == before
