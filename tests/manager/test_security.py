"""The attacker's tests of the manager's public routes, against the whole hub and the simulator.

Forged forwarded events, ids of every wrong shape, encoded proxy paths, anonymous look-ups and
deregistrations, and the Node puppet's Ctrl-C. Each answer must be a refusal with a reason, and a
refused request must leave nothing behind.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import AnyHttpUrl, SecretStr

from hub.up import Hub
from manager import registration as registration_module
from manager.forwarded import UNREGISTERED_LIMIT
from manager.mailbox import EVENTS as MANAGER_EVENTS
from manager.mailbox import MAILBOXES
from simulator.state import SimState
from tests.manager.test_compat_e2e import ADMIN, World, fast_dispatch, make_corp, refused
from tests.manager.test_compat_e2e import simulator as simulator  # a fixture
from tests.support.servers import serve_app
from tests.support.wecom_callbacks import CorpAppKeys, signed_post
from wecom.xml import build_xml
from wxkf.runtime import open_runtime
from wxkf.settings import Settings

GATEWAY_TOKEN = "gw-" + secrets.token_hex(16)


@pytest.fixture
def hub_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Extra settings of the hub under test (parametrize indirectly to change them)."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
async def hub(
    settings: Settings, simulator: tuple[str, SimState], hub_settings: dict[str, Any]
) -> AsyncIterator[World]:
    sim_url, state = simulator
    changes: dict[str, Any] = {"wecom_api_base": AnyHttpUrl(sim_url + "/cgi-bin"), **hub_settings}
    async with (
        open_runtime(settings.model_copy(update=changes)) as runtime,
        httpx.AsyncClient(timeout=30) as http,
    ):
        object.__setattr__(runtime, "admin_token", ADMIN)
        running = Hub(runtime, dispatch=fast_dispatch("hub-security"))
        await running.start()
        try:
            async with serve_app(running.app()) as hub_url:
                corp = await make_corp(http, sim_url, hub_url + "/callback/{corpid}")
                yield World(sim_url, hub_url, http, state, running, **corp)
        finally:
            await running.stop()


def manager_of(world: World) -> Any:
    assert world.hub is not None and world.hub.manager is not None
    return world.hub.manager


async def stored(world: World) -> tuple[int, int]:
    db = manager_of(world).db
    return await db[MANAGER_EVENTS].count_documents({}), await db[MAILBOXES].count_documents({})


async def forward(world: World, corp_id: str, body: Any, **headers: str) -> httpx.Response:
    return await world.http.post(f"{world.hub_url}/callback/decrypted/{corp_id}", json=body, headers=headers)


async def registered_puppet(world: World) -> str:
    """Register the world's puppet (its callback server is never called here); its webhook secret."""
    answer = await world.puppet().register(world.hub_url, "http://127.0.0.1:9")
    assert answer.json()["code"] == 0, answer.text
    return str(answer.json()["webhookSecret"])


# -- item 1: forged events through /callback/decrypted/{corpId} --------------------------------------
async def test_forwarded_events_are_refused_until_the_gateways_are_configured(hub: World) -> None:
    answer = await forward(hub, hub.corpid, {"token": "sync-token", "openKfId": hub.kf})
    assert answer.status_code == 403
    assert "WXKF_GATEWAY_TOKEN" in answer.text and "WXKF_GATEWAY_NETWORKS" in answer.text
    assert await stored(hub) == (0, 0)


@pytest.mark.parametrize("hub_settings", [{"wxkf_gateway_token": SecretStr(GATEWAY_TOKEN)}], indirect=True)
async def test_forwarded_events_need_the_gateway_token(hub: World) -> None:
    await registered_puppet(hub)  # the hub knows the corp from then on
    before = await stored(hub)
    body = {"token": "sync-token", "openKfId": hub.kf}
    assert (await forward(hub, hub.corpid, body)).status_code == 401
    wrong = await forward(hub, hub.corpid, body, authorization="Bearer " + GATEWAY_TOKEN[:-1])
    assert wrong.status_code == 401 and "WXKF_GATEWAY_TOKEN" in wrong.text
    assert await stored(hub) == before
    right = await forward(hub, hub.corpid, body, authorization=f"Bearer {GATEWAY_TOKEN}")
    assert right.status_code == 200 and right.text == "roger"
    assert (await stored(hub))[0] == before[0] + 1
    anonymous_again = await forward(hub, hub.corpid, {"token": "sync-token-2", "openKfId": hub.kf})
    assert anonymous_again.status_code == 401


@pytest.mark.parametrize(
    ("hub_settings", "allowed"),
    [({"wxkf_gateway_networks": "10.0.0.0/8"}, False), ({"wxkf_gateway_networks": "127.0.0.0/8"}, True)],
    indirect=["hub_settings"],
)
async def test_forwarded_events_need_a_caller_inside_the_gateway_networks(hub: World, allowed: bool) -> None:
    await registered_puppet(hub)
    before = await stored(hub)
    answer = await forward(hub, hub.corpid, {"token": "sync-token", "openKfId": hub.kf})
    if allowed:
        assert answer.text == "roger"
    else:
        assert answer.status_code == 403 and "WXKF_GATEWAY_NETWORKS" in answer.text
        assert await stored(hub) == before


@pytest.mark.parametrize("hub_settings", [{"wxkf_gateway_token": SecretStr(GATEWAY_TOKEN)}], indirect=True)
async def test_forwarded_ids_are_validated_and_unknown_corps_refused(hub: World) -> None:
    await registered_puppet(hub)
    before = await stored(hub)
    auth = {"authorization": f"Bearer {GATEWAY_TOKEN}"}
    good = {"token": "sync-token", "openKfId": hub.kf}
    huge = "e" * 5000
    for corp, body, headers in [
        (hub.corpid, good, {"webhook-id": huge}),  # the header bypassed the eventId check
        (hub.corpid, good, {"webhook-id": "a/b"}),
        (hub.corpid, {**good, "eventId": huge}, {}),
        (hub.corpid, {**good, "openKfId": "wk/../x"}, {}),
        (hub.corpid, {**good, "openKfId": "k" * 129}, {}),
        (hub.corpid, {**good, "token": "has space"}, {}),
        ("ww" + "x" * 100, good, {}),
    ]:
        answer = await forward(hub, corp, body, **auth, **headers)
        assert answer.status_code == 400, (corp, body, headers, answer.text)
        assert answer.text.startswith(("bad_id:", "bad_field:")), answer.text
    unknown = await forward(hub, "wwnobodyknows", good, **auth)
    assert unknown.status_code == 404 and "wwnobodyknows" in unknown.text
    assert await stored(hub) == before


@pytest.mark.parametrize("hub_settings", [{"wxkf_gateway_token": SecretStr(GATEWAY_TOKEN)}], indirect=True)
async def test_forwarded_events_create_a_bounded_number_of_never_registered_accounts(hub: World) -> None:
    auth = {"authorization": f"Bearer {GATEWAY_TOKEN}"}
    await registered_puppet(hub)

    async def send(kf: str, n: int) -> httpx.Response:
        return await forward(
            hub, hub.corpid, {"token": f"t{n}", "openKfId": kf, "eventId": f"e-{kf}-{n}"}, **auth
        )

    for n in range(UNREGISTERED_LIMIT):
        assert (await send(f"wkGHOST{n}", 0)).text == "roger"
    over = await send("wkONEMORE", 0)
    assert over.status_code == 403 and over.text.startswith("unknown_account:"), over.text
    assert (await send("wkGHOST0", 1)).text == "roger"  # an account that already holds events
    assert (await send(hub.kf, 1)).text == "roger"  # a registered one
    _, mailboxes = await stored(hub)
    assert mailboxes == UNREGISTERED_LIMIT + 1


# -- item 3: the request proxy's path ------------------------------------------------------------------
async def raw_request(url: str, method: str, target: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """Send ``target`` exactly as written (clients normalise dot segments and fragments away)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    lines = [f"{method} {target} HTTP/1.1", f"host: {parts.netloc}", "content-length: 0", "connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    status = int(response.split(b" ", 2)[1])
    return status, response.partition(b"\r\n\r\n")[2]


async def test_the_proxy_only_relays_plain_kf_and_media_api_names(hub: World) -> None:
    secret = await registered_puppet(hub)
    proof = {"authorization": f"Bearer {secret}"}
    query = f"?corpid={hub.corpid}&kfid={hub.kf}"
    base = "/puppetWxkfManager/wxkfRequestProxy/"
    ok = await hub.http.post(f"{hub.hub_url}{base}kf/account/list{query}", headers=proof, json={})
    assert ok.status_code == 200 and ok.json()["errcode"] == 0
    for path in [
        "kf/%252e%252e/user/get",  # decoded once by the router: kf/%2e%2e/user/get
        "kf/%2e%2e/user/get",
        "kf/..%2Fuser/get",
        "kf/../user/get",
        "kf/./account/list",
        "media/../../gettoken",
        "kf//account/list",
        "kf/account/list#fragment",
        "KF/account/list",
        "kf/account.list",
        "kf",
        "user/get",
        "kf/account/list/a/b/c",
    ]:
        status, body = await raw_request(hub.hub_url, "POST", base + path + query, proof)
        # a compat refusal, never an answer from upstream
        assert status == 200 and b'"code":403' in body and b"errcode" not in body, (path, status, body)


# -- item 5: malformed input refused with a reason ---------------------------------------------------
async def test_unparseable_endpoints_are_refused_not_a_500(hub: World) -> None:
    for endpoint in ["http://[::1/x", "http://" + "a" * 64 + ".example.org/", "http://[::1]:99999/"]:
        body = {**hub.puppet().register_body(endpoint)}
        answer = await hub.http.post(f"{hub.hub_url}/puppetWxkfManager/register", json=body)
        assert "endpoint" in refused(answer, 400), endpoint


async def test_a_kf_event_type_with_another_msgtype_is_a_bad_event_not_a_503(hub: World) -> None:
    keys = CorpAppKeys(hub.corpid, hub.token, hub.aes_key)
    plaintext = build_xml(
        {
            "ToUserName": hub.corpid,
            "CreateTime": 1700000000,
            "MsgType": "text",
            "Event": "kf_msg_or_event",
            "Token": "sync-token",
            "OpenKfId": hub.kf,
        }
    )
    query, body = signed_post(keys, plaintext)
    # the registry learns the corp's app at the first registration
    await registered_puppet(hub)
    answer = await hub.http.post(f"{hub.hub_url}/callback/{hub.corpid}?{query}", content=body)
    assert answer.status_code == 400 and answer.text.startswith("bad_event:") and "MsgType" in answer.text


# -- item 6: puppetWxkfInfo enumerates nothing ---------------------------------------------------------
async def test_an_anonymous_caller_cannot_tell_registered_accounts_or_their_state(hub: World) -> None:
    secret = await registered_puppet(hub)
    info = f"{hub.hub_url}/puppetWxkfManager/puppetWxkfInfo/"
    registered = await hub.http.get(info + hub.kf)
    unknown = await hub.http.get(info + "wkNOBODY")
    assert registered.json() == unknown.json()
    refused(registered, 401)
    wrong = await hub.http.get(info + hub.kf, headers={"authorization": "Bearer whsec_guess"})
    assert wrong.json() == unknown.json()
    assert (await hub.http.get(info + hub.kf, headers={"authorization": f"Bearer {secret}"})).json()["online"]
    admin = await hub.http.get(info + hub.kf, headers={"authorization": f"Bearer {ADMIN}"})
    assert admin.json()["kfId"] == hub.kf
    refused(await hub.http.get(info + "k" * 300), 400)


# -- item 14: Node puppets get 2xx refusals; Ctrl-C deregisters without crashing ---------------------
async def test_ctrl_c_of_a_node_puppet_is_refused_politely_and_changes_nothing(hub: World) -> None:
    puppet = hub.puppet()
    async with serve_app(puppet.app()) as puppet_url:
        secret = (await puppet.register(hub.hub_url, puppet_url)).json()["webhookSecret"]
        assert await puppet.sigint(hub.hub_url) == 0  # the original exits 1 on a non-2xx answer
        assert "webhookSecret" in puppet.exit_messages[0]
        info = await hub.http.get(
            f"{hub.hub_url}/puppetWxkfManager/puppetWxkfInfo/{hub.kf}",
            headers={"authorization": f"Bearer {secret}"},
        )
        assert info.json()["registered"] is True and info.json()["online"] is True
        await hub.customer_says("still served")
        assert await puppet.wait_for_texts(1) == ["still served"]


async def test_every_compat_refusal_is_a_2xx_with_a_code_and_a_reason(hub: World) -> None:
    url = f"{hub.hub_url}/puppetWxkfManager"
    for method, path, body in [
        ("POST", "/register", {"kfId": hub.kf}),
        ("POST", "/register", b"{not json"),
        ("POST", "/deregister", {"corpId": hub.corpid, "kfId": hub.kf}),
        ("POST", "/deregister", []),
        ("POST", "/heartbeat", {"corpId": hub.corpid, "kfId": hub.kf}),
        ("GET", "/puppetWxkfInfo/wkANY", None),
        ("POST", "/wxkfRequestProxy/kf/account/list", {}),
    ]:
        content = body if isinstance(body, bytes) else None
        payload = None if isinstance(body, bytes) or body is None else body
        answer = await hub.http.request(method, url + path, content=content, json=payload)
        assert answer.status_code == 200, (path, answer.status_code, answer.text)
        assert answer.json()["code"] not in (0, None) and answer.json()["message"], (path, answer.text)


# -- item 18: an account created moments before its puppet registers --------------------------------
async def test_an_account_created_just_before_registration_is_found_not_refused(hub: World) -> None:
    registrar = manager_of(hub).registration
    registrar.listing_recheck = 1.0
    await registered_puppet(hub)  # the account listing is fetched now
    created = await hub.http.post(
        f"{hub.sim_url}/sim/corps/{hub.corpid}/accounts", json={"open_kfid": "wkNEW", "name": "New"}
    )
    assert created.status_code == 201, created.text
    answer = await hub.puppet(kf="wkNEW").register(hub.hub_url, "http://127.0.0.1:9")
    assert answer.json()["code"] == 0, answer.text
    missing = await hub.puppet(kf="wkSTILLNOT").register(hub.hub_url, "http://127.0.0.1:9")
    assert "fetched again" in refused(missing, 403)


# -- item 13: the account listings a manager remembers are bounded -------------------------------------
async def test_remembered_account_listings_are_bounded(hub: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registration_module, "ACCOUNT_LISTS_KEPT", 2, raising=False)
    registrar = manager_of(hub).registration
    for _ in range(4):  # four corps, four app secrets, four listings
        corp = await make_corp(hub.http, hub.sim_url, None)
        puppet = World(hub.sim_url, hub.hub_url, hub.http, hub.state, hub.hub, **corp).puppet()
        assert (await puppet.register(hub.hub_url, "http://127.0.0.1:9")).json()["code"] == 0
    assert len(registrar._account_lists) == 2
