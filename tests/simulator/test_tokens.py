"""gettoken and the access_token check in front of every API."""

from __future__ import annotations

import pytest

from simulator import Rate, SimConfig
from simulator.wecom import errcodes as E
from tests.simulator.conftest import FAST, Acme, Sim


async def test_gettoken_issues_a_token_that_apis_accept(sim: Sim, acme: Acme) -> None:
    payload = await sim.get("gettoken", params={"corpid": acme.corpid, "corpsecret": acme.app.secret})
    assert payload["errcode"] == 0 and payload["errmsg"] == "ok"
    assert payload["expires_in"] == 7200
    listed = await sim.http.post(
        "/cgi-bin/kf/account/list", params={"access_token": payload["access_token"]}, json={}
    )
    assert listed.json()["errcode"] == 0


async def test_a_valid_token_is_returned_again_with_its_remaining_lifetime(sim: Sim, acme: Acme) -> None:
    first = await sim.get("gettoken", params={"corpid": acme.corpid, "corpsecret": acme.app.secret})
    sim.clock.advance(1000)
    second = await sim.get("gettoken", params={"corpid": acme.corpid, "corpsecret": acme.app.secret})
    assert second["access_token"] == first["access_token"]
    assert second["expires_in"] == 6200
    assert acme.app.gettoken_calls == 2


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({}, E.MISSING_CORPID),
        ({"corpid": "wwnobody", "corpsecret": "x"}, E.INVALID_CORPID),
        ({"corpid": "ACME"}, E.MISSING_SECRET),
        ({"corpid": "ACME", "corpsecret": "wrong"}, E.INVALID_CREDENTIAL),
    ],
)
async def test_gettoken_errors(sim: Sim, acme: Acme, params: dict[str, str], code: int) -> None:
    params = {key: acme.corpid if value == "ACME" else value for key, value in params.items()}
    payload = await sim.get("gettoken", params=params)
    assert payload["errcode"] == code
    assert "access_token" not in payload


@pytest.fixture
def config() -> SimConfig:
    return FAST.model_copy(update={"gettoken_rate": Rate(calls=3, seconds=60)})


async def test_gettoken_is_rate_limited_per_app_and_counted(sim: Sim, acme: Acme) -> None:
    other = sim.state.wecom.directory.add_app(acme.corp, "other")
    params = {"corpid": acme.corpid, "corpsecret": acme.app.secret}
    codes = [(await sim.get("gettoken", params=params))["errcode"] for _ in range(4)]
    assert codes == [0, 0, 0, E.RATE_LIMITED]
    assert (await sim.get("gettoken", params={"corpid": acme.corpid, "corpsecret": other.secret}))[
        "errcode"
    ] == 0
    assert acme.app.gettoken_calls == 4
    described = await sim.control("GET", f"/corps/{acme.corpid}/apps/{acme.app.agentid}")
    assert described["gettoken_calls"] == 4
    sim.clock.advance(60)
    assert (await sim.get("gettoken", params=params))["errcode"] == 0


async def api_errcode(sim: Sim, token: str | None) -> int:
    params = {} if token is None else {"access_token": token}
    response = await sim.http.post("/cgi-bin/kf/account/list", params=params, json={})
    code: int = response.json()["errcode"]
    return code


async def test_missing_unknown_and_expired_tokens(sim: Sim, acme: Acme) -> None:
    assert await api_errcode(sim, None) == E.MISSING_ACCESS_TOKEN
    assert await api_errcode(sim, "not-a-token") == E.INVALID_ACCESS_TOKEN
    token = await sim.token(acme.app)
    sim.clock.advance(7200)
    assert await api_errcode(sim, token) == E.ACCESS_TOKEN_EXPIRED
    fresh = await sim.token(acme.app)
    assert fresh != token and await api_errcode(sim, fresh) == 0


async def test_invalidated_tokens_get_40014_and_gettoken_issues_a_new_one(sim: Sim, acme: Acme) -> None:
    token = await sim.token(acme.app)
    result = await sim.control("POST", "/tokens/invalidate", {"access_token": token})
    assert result == {"invalidated": 1}
    assert await api_errcode(sim, token) == E.INVALID_ACCESS_TOKEN
    fresh = await sim.token(acme.app)
    assert fresh != token
    result = await sim.control(
        "POST", "/tokens/invalidate", {"corpid": acme.corpid, "agentid": acme.app.agentid}
    )
    assert result == {"invalidated": 1}
    assert await api_errcode(sim, fresh) == E.INVALID_ACCESS_TOKEN


async def test_invalidate_needs_a_target(sim: Sim) -> None:
    await sim.control("POST", "/tokens/invalidate", {}, status=400)


async def test_a_token_only_works_in_its_own_corp(sim: Sim, acme: Acme) -> None:
    other = sim.state.wecom.directory.add_corp(name="Other")
    other_app = sim.state.wecom.directory.add_app(other)
    payload = await sim.call(other_app, "kf/sync_msg", {"open_kfid": acme.open_kfid, "token": "x"})
    assert payload["errcode"] == E.OPEN_KFID_NOT_FOUND
