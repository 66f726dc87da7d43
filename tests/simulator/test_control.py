"""The control API and seeds: creating things, moving the clock, reading state."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from simulator import OffsetClock, SeedError, SimState, create_app
from tests.simulator.conftest import Sim
from tests.support.clock import FakeClock
from tests.support.servers import serve_app

AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"


async def test_create_a_corp_with_everything_in_one_call(sim: Sim) -> None:
    corp = await sim.control(
        "POST",
        "/corps",
        {
            "corpid": "wwacme",
            "name": "Acme",
            "apps": [{"name": "kf", "secret": "s3cret", "token": "QDG6eK", "encoding_aes_key": AES_KEY}],
            "accounts": [{"name": "Support", "servicers": ["alice"]}],
            "customers": [{"external_userid": "wmbob", "nickname": "Bob"}],
        },
        status=201,
    )
    [app] = corp["apps"]
    assert (app["agentid"], app["secret"], app["token"], app["encoding_aes_key"]) == (
        1000002,
        "s3cret",
        "QDG6eK",
        AES_KEY,
    )
    assert corp["accounts"][0]["managed_by"] == [1000002]
    assert corp["accounts"][0]["open_kfid"].startswith("wk")
    token = await sim.get("gettoken", params={"corpid": "wwacme", "corpsecret": "s3cret"})
    assert token["errcode"] == 0


async def test_generated_credentials_work(sim: Sim) -> None:
    corp = await sim.control("POST", "/corps", {})
    app = await sim.control(
        "POST", f"/corps/{corp['corpid']}/apps", {"callback_url": "http://127.0.0.1:1/cb"}
    )
    assert len(app["encoding_aes_key"]) == 43 and len(app["secret"]) == 43 and app["token"].isalnum()
    crypt_ok = await sim.get("gettoken", params={"corpid": corp["corpid"], "corpsecret": app["secret"]})
    assert crypt_ok["errcode"] == 0
    second = await sim.control("POST", f"/corps/{corp['corpid']}/apps", {"name": "bridge"})
    assert second["agentid"] == app["agentid"] + 1


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/corps", {"apps": [{"encoding_aes_key": "short"}]}, 400),
        ("/corps", {"apps": [{"callback_url": "ftp://x"}]}, 400),
        ("/corps", {"accounts": [{"managed_by": [42]}]}, 400),
        ("/corps", {"bogus": 1}, 400),
        ("/corps/wwnobody/apps", {}, 404),
    ],
)
async def test_bad_control_requests(sim: Sim, path: str, body: dict[str, object], status: int) -> None:
    result = await sim.control("POST", path, body, status=status)
    assert result["error"]


async def test_a_failed_corp_creation_leaves_nothing_behind(sim: Sim) -> None:
    await sim.control("POST", "/corps", {"corpid": "wwhalf", "accounts": [{"managed_by": [42]}]}, status=400)
    await sim.control("GET", "/corps/wwhalf", status=404)


async def test_accounts_can_be_unmanaged_and_reassigned(sim: Sim) -> None:
    corp = await sim.control("POST", "/corps", {"apps": [{}, {}]})
    agentids = [app["agentid"] for app in corp["apps"]]
    account = await sim.control(
        "POST", f"/corps/{corp['corpid']}/accounts", {"name": "VIP", "managed_by": agentids[1:]}, status=201
    )
    path = f"/corps/{corp['corpid']}/accounts/{account['open_kfid']}"
    assert (await sim.control("GET", path))["managed_by"] == agentids[1:]
    patched = await sim.control("PATCH", path, {"managed_by": agentids[:1], "servicers": ["carol"]})
    assert (patched["managed_by"], patched["servicers"]) == (agentids[:1], ["carol"])


async def test_the_account_log_shows_api_sent_messages_too(sim: Sim) -> None:
    corp = await sim.control("POST", "/corps", {"apps": [{}], "accounts": [{}]})
    path = f"/corps/{corp['corpid']}/accounts/{corp['accounts'][0]['open_kfid']}"
    written = await sim.control(
        "POST", path + "/messages", {"msgtype": "text", "text": {"content": "hi"}}, status=201
    )
    assert written["message"]["external_userid"].startswith("wm")  # a new customer was made up
    assert written["deliveries"] == []  # no app has a callback URL
    log = await sim.control("GET", path + "/messages")
    assert [(m["text"]["content"], m["via_api"]) for m in log["messages"]] == [("hi", False)]
    described = await sim.control("GET", path)
    assert described["sessions"][written["message"]["external_userid"]]["service_state"] == 0


async def test_clock_advances_when_adjustable(sim: Sim) -> None:
    before = await sim.control("GET", "/clock")
    assert before["adjustable"] is True
    after = await sim.control("POST", "/clock/advance", {"seconds": 3600})
    assert after["now"] == before["now"] + 3600 == sim.clock()
    await sim.control("POST", "/clock/advance", {"seconds": -1}, status=400)


async def test_clock_is_fixed_without_an_adjustable_clock() -> None:
    async with (
        serve_app(create_app(), lifespan="on") as url,
        httpx.AsyncClient(base_url=url, trust_env=False) as http,
    ):
        assert (await http.get("/sim/clock")).json()["adjustable"] is False
        assert (await http.post("/sim/clock/advance", json={"seconds": 1})).status_code == 409


def test_offset_clock() -> None:
    base = FakeClock(100.0)
    clock = OffsetClock(base)
    clock.advance(50)
    base.advance(1)
    assert clock() == 151.0
    with pytest.raises(ValueError):
        clock.advance(-1)


async def test_state_and_config_are_readable(sim: Sim) -> None:
    await sim.control("POST", "/corps", {"name": "Acme"})
    state = await sim.control("GET", "/state")
    assert [corp["name"] for corp in state["wecom"]["corps"]] == ["Acme"]
    config = await sim.control("GET", "/config")
    assert config["callback_timeout"] == 0.3 and config["send_limit"] == 5


def seed_data() -> dict[str, object]:
    return {
        "config": {"token_ttl": 60, "sync_tokenless_rate": None},
        "corps": [
            {
                "corpid": "wwseed",
                "apps": [{"agentid": 1000005, "secret": "seed-secret"}],
                "accounts": [{"open_kfid": "wkseed", "name": "Seeded"}],
                "customers": [{"external_userid": "wmseed"}],
            }
        ],
        "robots": [{"key": "seed-robot"}],
    }


async def test_seed_file(tmp_path: Path) -> None:
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(seed_data()))
    state = SimState.from_seed(path, FakeClock())
    assert state.config.token_ttl == 60 and state.config.sync_tokenless_rate is None
    corp = state.wecom.directory.corp("wwseed")
    assert corp.accounts["wkseed"].managed_by == {1000005}
    assert "seed-robot" in state.wecom.robots.robots
    async with (
        serve_app(create_app(seed=path), lifespan="on") as url,
        httpx.AsyncClient(base_url=url, trust_env=False) as http,
    ):
        token = (
            await http.get("/cgi-bin/gettoken", params={"corpid": "wwseed", "corpsecret": "seed-secret"})
        ).json()
        assert token["expires_in"] == 60


def test_seed_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(SeedError, match=r"missing\.json"):
        SimState.from_seed(missing)
    with pytest.raises(SeedError, match=r"config\.token_ttl"):
        SimState.from_seed({"config": {"token_ttl": 0}})
    with pytest.raises(SeedError, match="already exists"):
        SimState.from_seed({"corps": [{"corpid": "ww1"}, {"corpid": "ww1"}]})
    with pytest.raises(SeedError, match="config"):
        SimState().load(seed_data())
