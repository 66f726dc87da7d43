"""The attacker's tests of the manager's public routes, against the whole hub and the simulator.

Forged forwarded events, ids of every wrong shape, encoded proxy paths, anonymous look-ups and
deregistrations, and the Node puppet's Ctrl-C. Each answer must be a refusal with a reason, and a
refused request must leave nothing behind.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import AnyHttpUrl, SecretStr

from gateway.app import build_gateway, gateway_app
from manager import registration as registration_module
from manager.forwarded import UNREGISTERED_LIMIT
from manager.mailbox import EVENTS as MANAGER_EVENTS
from manager.mailbox import MAILBOXES
from tests.manager.test_compat_e2e import ADMIN, World, make_corp, refused
from tests.manager.test_compat_e2e import hub_settings as hub_settings  # fixtures
from tests.manager.test_compat_e2e import simulator as simulator
from tests.manager.test_compat_e2e import world as world
from tests.support.servers import serve_app
from tests.support.wecom_callbacks import CorpAppKeys, signed_post
from wecom.xml import build_xml
from wxkf.runtime import open_runtime
from wxkf.settings import Settings

GATEWAY_TOKEN = "gw-" + secrets.token_hex(16)


def manager_of(world: World) -> Any:
    assert world.hub is not None and world.hub.manager is not None
    return world.hub.manager


async def stored(world: World) -> tuple[int, int]:
    """Events logged, and mailboxes of accounts other than the world's own (registering it makes
    one, at a moment of the dispatcher's choosing)."""
    db = manager_of(world).db
    own = f"{world.corpid}/{world.kf}"
    return (
        await db[MANAGER_EVENTS].count_documents({}),
        await db[MAILBOXES].count_documents({"_id": {"$ne": own}}),
    )


async def forward(world: World, corp_id: str, body: Any, **headers: str) -> httpx.Response:
    return await world.http.post(f"{world.hub_url}/callback/decrypted/{corp_id}", json=body, headers=headers)


async def registered_puppet(world: World) -> str:
    """Register the world's puppet (its callback server is never called here); its webhook secret."""
    answer = await world.puppet().register(world.hub_url, "http://127.0.0.1:9")
    assert answer.json()["code"] == 0, answer.text
    return str(answer.json()["webhookSecret"])


# -- item 1: forged events through /callback/decrypted/{corpId} --------------------------------------
async def test_forwarded_events_are_refused_until_the_gateways_are_configured(world: World) -> None:
    answer = await forward(world, world.corpid, {"token": "sync-token", "openKfId": world.kf})
    assert answer.status_code == 403
    assert "WXKF_GATEWAY_TOKEN" in answer.text and "WXKF_GATEWAY_NETWORKS" in answer.text
    assert await stored(world) == (0, 0)


@pytest.mark.parametrize("hub_settings", [{"wxkf_gateway_token": SecretStr(GATEWAY_TOKEN)}], indirect=True)
async def test_forwarded_events_need_the_gateway_token(world: World) -> None:
    await registered_puppet(world)  # the hub knows the corp from then on
    before = await stored(world)
    body = {"token": "sync-token", "openKfId": world.kf}
    assert (await forward(world, world.corpid, body)).status_code == 401
    wrong = await forward(world, world.corpid, body, authorization="Bearer " + GATEWAY_TOKEN[:-1])
    assert wrong.status_code == 401 and "WXKF_GATEWAY_TOKEN" in wrong.text
    assert await stored(world) == before
    right = await forward(world, world.corpid, body, authorization=f"Bearer {GATEWAY_TOKEN}")
    assert right.status_code == 200 and right.text == "roger"
    assert (await stored(world))[0] == before[0] + 1
    anonymous_again = await forward(world, world.corpid, {"token": "sync-token-2", "openKfId": world.kf})
    assert anonymous_again.status_code == 401


@pytest.mark.parametrize(
    ("hub_settings", "allowed"),
    [({"wxkf_gateway_networks": "10.0.0.0/8"}, False), ({"wxkf_gateway_networks": "127.0.0.0/8"}, True)],
    indirect=["hub_settings"],
)
async def test_forwarded_events_need_a_caller_inside_the_gateway_networks(
    world: World, allowed: bool
) -> None:
    await registered_puppet(world)
    before = await stored(world)
    answer = await forward(world, world.corpid, {"token": "sync-token", "openKfId": world.kf})
    if allowed:
        assert answer.text == "roger"
    else:
        assert answer.status_code == 403 and "WXKF_GATEWAY_NETWORKS" in answer.text
        assert await stored(world) == before


@pytest.mark.parametrize(
    "hub_settings",
    [{"wxkf_gateway_token": SecretStr(GATEWAY_TOKEN), "wxkf_gateway_networks": "10.0.0.0/8"}],
    indirect=True,
)
async def test_with_token_and_networks_set_a_caller_needs_both(world: World) -> None:
    await registered_puppet(world)
    before = await stored(world)
    body = {"token": "sync-token", "openKfId": world.kf}
    answer = await forward(world, world.corpid, body, authorization=f"Bearer {GATEWAY_TOKEN}")
    assert answer.status_code == 403 and "WXKF_GATEWAY_NETWORKS" in answer.text
    assert await stored(world) == before


@pytest.mark.parametrize("hub_settings", [{"wxkf_gateway_token": SecretStr(GATEWAY_TOKEN)}], indirect=True)
async def test_forwarded_ids_are_validated_and_unknown_corps_refused(world: World) -> None:
    await registered_puppet(world)
    before = await stored(world)
    auth = {"authorization": f"Bearer {GATEWAY_TOKEN}"}
    good = {"token": "sync-token", "openKfId": world.kf}
    huge = "e" * 5000
    for corp, body, headers in [
        (world.corpid, good, {"webhook-id": huge}),  # the header bypassed the eventId check
        (world.corpid, good, {"webhook-id": "a/b"}),
        (world.corpid, {**good, "eventId": huge}, {}),
        (world.corpid, {**good, "openKfId": "wk/../x"}, {}),
        (world.corpid, {**good, "openKfId": "k" * 129}, {}),
        (world.corpid, {**good, "token": "has space"}, {}),
        ("ww" + "x" * 100, good, {}),
    ]:
        answer = await forward(world, corp, body, **auth, **headers)
        assert answer.status_code == 400, (corp, body, headers, answer.text)
        assert answer.text.startswith(("bad_id:", "bad_field:")), answer.text
    unknown = await forward(world, "wwnobodyknows", good, **auth)
    assert unknown.status_code == 404 and "wwnobodyknows" in unknown.text
    assert await stored(world) == before


@pytest.mark.parametrize("hub_settings", [{"wxkf_gateway_token": SecretStr(GATEWAY_TOKEN)}], indirect=True)
async def test_forwarded_events_create_a_bounded_number_of_never_registered_accounts(world: World) -> None:
    auth = {"authorization": f"Bearer {GATEWAY_TOKEN}"}
    await registered_puppet(world)

    async def send(kf: str, n: int) -> httpx.Response:
        return await forward(
            world, world.corpid, {"token": f"t{n}", "openKfId": kf, "eventId": f"e-{kf}-{n}"}, **auth
        )

    for n in range(UNREGISTERED_LIMIT):
        assert (await send(f"wkGHOST{n}", 0)).text == "roger"
    over = await send("wkONEMORE", 0)
    assert over.status_code == 403 and over.text.startswith("unknown_account:"), over.text
    assert (await send("wkGHOST0", 1)).text == "roger"  # an account that already holds events
    assert (await send(world.kf, 1)).text == "roger"  # a registered one
    _, mailboxes = await stored(world)
    assert mailboxes == UNREGISTERED_LIMIT


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


async def test_the_proxy_only_relays_plain_kf_and_media_api_names(world: World) -> None:
    secret = await registered_puppet(world)
    proof = {"authorization": f"Bearer {secret}"}
    query = f"?corpid={world.corpid}&kfid={world.kf}"
    base = "/puppetWxkfManager/wxkfRequestProxy/"
    ok = await world.http.post(f"{world.hub_url}{base}kf/account/list{query}", headers=proof, json={})
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
        status, body = await raw_request(world.hub_url, "POST", base + path + query, proof)
        # a compat refusal (upstream answers never have "code"), never an answer from upstream
        assert status == 200 and json.loads(body)["code"] == 403, (path, status, body)
        assert json.loads(body)["errcode"] == 403, body


# -- item 5: malformed input refused with a reason ---------------------------------------------------
async def test_unparseable_endpoints_are_refused_not_a_500(world: World) -> None:
    for endpoint in ["http://[::1/x", "http://" + "a" * 64 + ".example.org/", "http://[::1]:99999/"]:
        body = {**world.puppet().register_body(endpoint)}
        answer = await world.http.post(f"{world.hub_url}/puppetWxkfManager/register", json=body)
        assert "endpoint" in refused(answer, 400), endpoint


async def test_a_kf_event_type_with_another_msgtype_is_a_bad_event_not_a_503(world: World) -> None:
    keys = CorpAppKeys(world.corpid, world.token, world.aes_key)
    plaintext = build_xml(
        {
            "ToUserName": world.corpid,
            "CreateTime": 1700000000,
            "MsgType": "text",
            "Event": "kf_msg_or_event",
            "Token": "sync-token",
            "OpenKfId": world.kf,
        }
    )
    query, body = signed_post(keys, plaintext)
    # the registry learns the corp's app at the first registration
    await registered_puppet(world)
    answer = await world.http.post(f"{world.hub_url}/callback/{world.corpid}?{query}", content=body)
    assert answer.status_code == 400 and answer.text.startswith("bad_event:") and "MsgType" in answer.text


# -- item 6: puppetWxkfInfo enumerates nothing ---------------------------------------------------------
async def test_an_anonymous_caller_cannot_tell_registered_accounts_or_their_state(world: World) -> None:
    secret = await registered_puppet(world)
    info = f"{world.hub_url}/puppetWxkfManager/puppetWxkfInfo/"
    registered = await world.http.get(info + world.kf)
    unknown = await world.http.get(info + "wkNOBODY")
    assert registered.json() == unknown.json()
    refused(registered, 401)
    wrong = await world.http.get(info + world.kf, headers={"authorization": "Bearer whsec_guess"})
    assert wrong.json() == unknown.json()
    assert (await world.http.get(info + world.kf, headers={"authorization": f"Bearer {secret}"})).json()[
        "online"
    ]
    admin = await world.http.get(info + world.kf, headers={"authorization": f"Bearer {ADMIN}"})
    assert admin.json()["kfId"] == world.kf
    refused(await world.http.get(info + "k" * 300), 400)


# -- item 14: Node puppets get 2xx refusals; Ctrl-C deregisters without crashing ---------------------
async def test_ctrl_c_of_a_node_puppet_is_refused_politely_and_changes_nothing(world: World) -> None:
    puppet = world.puppet()
    async with serve_app(puppet.app()) as puppet_url:
        secret = (await puppet.register(world.hub_url, puppet_url)).json()["webhookSecret"]
        assert await puppet.sigint(world.hub_url) == 0  # the original exits 1 on a non-2xx answer
        assert "webhookSecret" in puppet.exit_messages[0]
        info = await world.http.get(
            f"{world.hub_url}/puppetWxkfManager/puppetWxkfInfo/{world.kf}",
            headers={"authorization": f"Bearer {secret}"},
        )
        assert info.json()["registered"] is True and info.json()["online"] is True
        await world.customer_says("still served")
        assert await puppet.wait_for_texts(1) == ["still served"]


async def test_every_compat_refusal_is_a_2xx_with_a_code_and_a_reason(world: World) -> None:
    url = f"{world.hub_url}/puppetWxkfManager"
    for method, path, body in [
        ("POST", "/register", {"kfId": world.kf}),
        ("POST", "/register", b"{not json"),
        ("POST", "/deregister", {"corpId": world.corpid, "kfId": world.kf}),
        ("POST", "/deregister", []),
        ("POST", "/heartbeat", {"corpId": world.corpid, "kfId": world.kf}),
        ("GET", "/puppetWxkfInfo/wkANY", None),
        ("POST", "/wxkfRequestProxy/kf/account/list", {}),
    ]:
        content = body if isinstance(body, bytes) else None
        payload = None if isinstance(body, bytes) or body is None else body
        answer = await world.http.request(method, url + path, content=content, json=payload)
        assert answer.status_code == 200, (path, answer.status_code, answer.text)
        assert answer.json()["code"] not in (0, None) and answer.json()["message"], (path, answer.text)


# -- item 18: an account created moments before its puppet registers --------------------------------
async def test_an_account_created_just_before_registration_is_found_not_refused(world: World) -> None:
    registrar = manager_of(world).registration
    registrar.listing_recheck = 1.0
    await registered_puppet(world)  # the account listing is fetched now
    created = await world.http.post(
        f"{world.sim_url}/sim/corps/{world.corpid}/accounts", json={"open_kfid": "wkNEW", "name": "New"}
    )
    assert created.status_code == 201, created.text
    answer = await world.puppet(kf="wkNEW").register(world.hub_url, "http://127.0.0.1:9")
    assert answer.json()["code"] == 0, answer.text
    missing = await world.puppet(kf="wkSTILLNOT").register(world.hub_url, "http://127.0.0.1:9")
    assert "fetched again" in refused(missing, 403)


# -- item 13: the account listings a manager remembers are bounded -------------------------------------
async def test_remembered_account_listings_are_bounded(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registration_module, "ACCOUNT_LISTS_KEPT", 2, raising=False)
    registrar = manager_of(world).registration
    for _ in range(4):  # four corps, four app secrets, four listings
        corp = await make_corp(world.http, world.sim_url, None)
        puppet = World(world.sim_url, world.hub_url, world.http, world.state, world.hub, **corp).puppet()
        assert (await puppet.register(world.hub_url, "http://127.0.0.1:9")).json()["code"] == 0
    assert len(registrar._account_lists) == 2


# -- item 1, both halves: wxkf gateway forwarding to a manager that requires its token ----------------
@pytest.mark.parametrize("hub_settings", [{"wxkf_gateway_token": SecretStr(GATEWAY_TOKEN)}], indirect=True)
async def test_split_mode_gateway_authenticates_to_the_manager_and_messages_flow(
    world: World, settings: Settings
) -> None:
    gateway_settings = settings.model_copy(
        update={
            "manager_endpoint": AnyHttpUrl(world.hub_url),
            "wxkf_gateway_token": SecretStr(GATEWAY_TOKEN),
            "wxkf_replica_id": "gateway-split",
        }
    )
    puppet = world.puppet()
    async with open_runtime(gateway_settings) as runtime:
        gateway = build_gateway(runtime)
        await gateway.start()
        try:
            async with (
                serve_app(gateway_app(gateway, None)) as gateway_url,
                serve_app(puppet.app()) as puppet_url,
            ):
                await puppet.register(world.hub_url, puppet_url)  # the corp's app is stored now
                patched = await world.http.patch(
                    f"{world.sim_url}/sim/corps/{world.corpid}/apps/1000002",
                    json={"callback_url": f"{gateway_url}/callback/{world.corpid}"},
                )
                assert patched.status_code == 200, patched.text
                await world.customer_says("through the gateway")
                assert await puppet.wait_for_texts(1) == ["through the gateway"]
        finally:
            await gateway.stop()
    assert puppet.callbacks == ["decrypted"]


async def test_registrations_with_random_secrets_cost_a_bounded_number_of_gettoken_calls(
    world: World,
) -> None:
    """/register proves a corpSecret with an upstream gettoken: random secrets from one caller are
    charged to its budget, so they cannot spend WeCom's gettoken limit for the legitimate refreshes."""
    assert (await world.puppet().register(world.hub_url, "http://127.0.0.1:9")).json()["code"] == 0
    before = (await world.http.get(f"{world.sim_url}/sim/tokens")).json()["requests"]
    answers = []
    for _ in range(40):
        puppet = world.puppet(secret="random-" + secrets.token_hex(12))
        answers.append(await puppet.register(world.hub_url, "http://127.0.0.1:9"))
    after = (await world.http.get(f"{world.sim_url}/sim/tokens")).json()["requests"]
    burst = manager_of(world).tokens.policy.caller_burst
    assert after - before <= burst + 2, (before, after)
    codes = [answer.json()["code"] for answer in answers]
    assert all(answer.status_code == 200 for answer in answers)
    assert codes.count(429) >= 40 - burst - 2, codes
    assert "retry in" in next(a.json()["message"] for a in answers if a.json()["code"] == 429)
    # the legitimate puppet of the same host still registers: its proven secret is never charged
    assert (await world.puppet().register(world.hub_url, "http://127.0.0.1:9")).json()["code"] == 0
