"""The whole hub against the simulator, with a Node-shaped puppet: registration by proof, dispatch,
outage recovery, redaction and the proxy. Real processes where it matters, real sockets throughout."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import AnyHttpUrl

from gateway.inbox import COLLECTION as INBOX
from hub.up import Hub
from manager.dispatcher import DispatchConfig
from manager.mailbox import EVENTS as MANAGER_EVENTS
from simulator import SimConfig, create_app
from simulator.clock import OffsetClock
from simulator.state import SimState
from tests.manager.conftest import FAST
from tests.support.corp import corp_spec, create_corp
from tests.support.node_puppet import NodePuppet
from tests.support.servers import serve_app
from tests.support.services import ServiceProcess, free_port, service_env
from tests.support.wecom_callbacks import CorpAppKeys, kf_event_xml, signed_post
from wxkf.logging import configure_logging
from wxkf.runtime import open_runtime
from wxkf.settings import Settings

ADMIN = "e2e-admin"


@dataclass
class World:
    """A simulator with one corp (an app, a managed and an unmanaged account), a running hub."""

    sim_url: str
    hub_url: str
    http: httpx.AsyncClient
    state: SimState
    hub: Hub | None
    corpid: str
    secret: str
    token: str
    aes_key: str
    kf: str = "wkMANAGED"
    other_kf: str = "wkOTHER"
    customer: str = "wmCUSTOMER"

    def puppet(self, kf: str | None = None, secret: str | None = None) -> NodePuppet:
        return NodePuppet(
            corp_id=self.corpid,
            corp_secret=secret or self.secret,
            token=self.token,
            aes_key=self.aes_key,
            kf_id=kf or self.kf,
            api_base=self.sim_url + "/cgi-bin",
            http=self.http,
        )

    async def customer_says(self, text: str, wait: bool = True) -> None:
        response = await self.http.post(
            f"{self.sim_url}/sim/corps/{self.corpid}/accounts/{self.kf}/messages",
            params={"wait": "true"} if wait else None,
            json={"external_userid": self.customer, "msgtype": "text", "text": {"content": text}},
        )
        assert response.status_code in (200, 201, 202), response.text

    async def advance_sim_clock(self, seconds: float) -> None:
        response = await self.http.post(f"{self.sim_url}/sim/clock/advance", json={"seconds": seconds})
        assert response.status_code == 200, response.text


def refused(response: httpx.Response, code: int) -> str:
    """A compat refusal as the Node manager answered it: HTTP 200, ``code`` non-zero; its message."""
    assert response.status_code == 200, (response.status_code, response.text)
    body = response.json()
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return str(body["message"])


def fast_dispatch(owner: str) -> DispatchConfig:
    return DispatchConfig(owner=owner, schedule=FAST, sweep_interval=0.05, probe_interval=0.05)


@pytest.fixture
async def simulator() -> AsyncIterator[tuple[str, SimState]]:
    state = SimState(
        clock=OffsetClock(), config=SimConfig(callback_timeout=2.0, callback_retry_delays=(0.0,))
    )
    async with serve_app(create_app(state), lifespan="on") as url:
        yield url, state


async def make_corp(http: httpx.AsyncClient, sim_url: str, callback_url: str | None) -> dict[str, Any]:
    accounts = [
        {"open_kfid": "wkMANAGED", "name": "Support"},
        {"open_kfid": "wkOTHER", "name": "Elsewhere", "managed_by": []},
    ]
    keys = await create_corp(http, sim_url, corp_spec(accounts, ["wmCUSTOMER"]))
    if callback_url:
        patched = await http.patch(
            f"{sim_url}/sim/corps/{keys.corpid}/apps/1000002",
            json={"callback_url": callback_url.format(corpid=keys.corpid)},
        )
        assert patched.status_code == 200, patched.text
    return asdict(keys)


@pytest.fixture
def hub_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Extra settings of the hub under test (parametrize it indirectly to change them)."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
async def world(
    settings: Settings, simulator: tuple[str, SimState], hub_settings: dict[str, Any]
) -> AsyncIterator[World]:
    sim_url, state = simulator
    changes = {"wecom_api_base": AnyHttpUrl(sim_url + "/cgi-bin"), **hub_settings}
    async with (
        open_runtime(settings.model_copy(update=changes)) as runtime,
        httpx.AsyncClient(timeout=30) as http,
    ):
        object.__setattr__(runtime, "admin_token", ADMIN)
        hub = Hub(runtime, dispatch=fast_dispatch("hub-e2e"))
        await hub.start()
        try:
            async with serve_app(hub.app()) as hub_url:
                corp = await make_corp(http, sim_url, hub_url + "/callback/{corpid}")
                yield World(sim_url, hub_url, http, state, hub, **corp)
        finally:
            await hub.stop()


async def test_node_puppet_registers_receives_and_pulls(world: World) -> None:
    puppet = world.puppet()
    async with serve_app(puppet.app()) as puppet_url:
        registered = await puppet.register(world.hub_url, puppet_url)
        assert registered.status_code == 200, registered.text
        body = registered.json()
        assert body["code"] == 0 and body["message"] == "success"
        assert body["webhookSecret"].startswith("whsec_")  # an extra field; Node puppets ignore it
        await world.customer_says("你好")
        assert await puppet.wait_for_texts(1) == ["你好"]
        assert puppet.callbacks == ["raw"]  # encrypted callbacks reach Node puppets as the original XML


async def test_up_stores_each_kf_callback_once_in_the_manager_and_dedupes_retries(world: World) -> None:
    """In one process the gateway hands kf callbacks to the manager's durable intake before answering:
    one stored copy (the manager's log), none in the gateway's inbox, and WeCom's retry is recognised."""
    puppet = world.puppet()
    async with serve_app(puppet.app()) as puppet_url:
        assert (await puppet.register(world.hub_url, puppet_url)).json()["code"] == 0
        keys = CorpAppKeys(world.corpid, world.token, world.aes_key)
        query, body = signed_post(keys, kf_event_xml(world.corpid, world.kf, "sync-token-1"))
        for _ in range(2):  # the original and WeCom's retry
            answer = await world.http.post(f"{world.hub_url}/callback/{world.corpid}?{query}", content=body)
            assert answer.status_code == 200 and answer.text == "success"
        assert world.hub is not None
        db = world.hub.runtime.db
        assert await db[INBOX].count_documents({}) == 0
        assert await db[MANAGER_EVENTS].count_documents({}) == 1


async def test_forged_registrations_are_refused_with_a_reason(world: World) -> None:
    async def attempt(**changes: Any) -> httpx.Response:
        body = world.puppet().register_body("http://127.0.0.1:9")
        body.update(changes)
        return await world.http.post(f"{world.hub_url}/puppetWxkfManager/register", json=body)

    assert "corpSecret" in refused(await attempt(corpSecret="not-the-secret"), 403)
    assert "manage" in refused(await attempt(kfId=world.other_kf), 403)
    refused(await attempt(kfId="wkNOPE"), 403)
    for endpoint in (
        "http://169.254.169.254/latest",
        "file:///etc/passwd",
        "ftp://example.org",
        "http://[fe80::1]/",
    ):
        assert "endpoint" in refused(await attempt(endpoint=endpoint), 400), endpoint
    malformed = await world.http.post(
        f"{world.hub_url}/puppetWxkfManager/register",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    refused(malformed, 400)
    oversize = await world.http.post(f"{world.hub_url}/puppetWxkfManager/register", content=b"x" * 100_000)
    refused(oversize, 413)
    missing = await world.http.post(f"{world.hub_url}/puppetWxkfManager/register", json={"kfId": world.kf})
    refused(missing, 400)
    assert world.hub is not None and world.hub.manager is not None
    assert await world.hub.manager.puppets.count() == 0


@pytest.fixture
def production_logging() -> Iterator[None]:
    """The logging `wxkf up` configures, undone afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    configure_logging("DEBUG")
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_info_and_responses_never_leak_secrets(
    world: World, production_logging: None, caplog: pytest.LogCaptureFixture
) -> None:
    # production_logging before caplog: caplog restores the (DEBUG) levels it saw first, and
    # production_logging then restores the suite's own; the other order left the suite at DEBUG.
    caplog.set_level("DEBUG")
    for library in ("httpx", "httpcore"):  # even with the HTTP libraries turned up to DEBUG
        caplog.set_level("DEBUG", logger=library)
    puppet = world.puppet()
    async with serve_app(puppet.app()) as puppet_url:
        registered = await puppet.register(world.hub_url, puppet_url)
        secret = registered.json()["webhookSecret"]
        info = await world.http.get(f"{world.hub_url}/puppetWxkfManager/puppetWxkfInfo/{world.kf}")
        assert "webhookSecret" in refused(info, 401)  # an anonymous caller learns nothing
        trusted = await world.http.get(
            f"{world.hub_url}/puppetWxkfManager/puppetWxkfInfo/{world.kf}",
            headers={"authorization": f"Bearer {secret}"},
        )
        assert trusted.json()["endpoint"] == puppet_url and trusted.json()["kfId"] == world.kf
        for text in (info.text, trusted.text):
            for hidden in (world.secret, world.token, world.aes_key):
                assert hidden not in text
        await world.customer_says("ping")
        await puppet.wait_for_texts(1)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for hidden in (world.secret, world.aes_key, secret):
        assert hidden not in logged


async def test_get_token_is_cached_and_checks_the_secret(world: World) -> None:
    url = f"{world.hub_url}/puppetWxkfManager/getToken"
    tokens = set()
    for _ in range(20):
        answer = (
            await world.http.get(url, params={"corpid": world.corpid, "corpsecret": world.secret})
        ).json()
        assert answer["errcode"] == 0 and answer["expires_in"] > 7000
        tokens.add(answer["access_token"])
    assert len(tokens) == 1
    app = (await world.http.get(f"{world.sim_url}/sim/corps/{world.corpid}/apps/1000002")).json()
    assert app["gettoken_calls"] == 1
    wrong = (await world.http.get(url, params={"corpid": world.corpid, "corpsecret": "wrong"})).json()
    assert wrong["errcode"] == 40001
    assert "access_token" not in wrong


async def test_request_proxy_injects_the_token_only_for_proven_callers(world: World) -> None:
    puppet = world.puppet()
    async with serve_app(puppet.app()) as puppet_url:
        secret = (await puppet.register(world.hub_url, puppet_url)).json()["webhookSecret"]
    proxy = f"{world.hub_url}/puppetWxkfManager/wxkfRequestProxy"
    anonymous = await world.http.post(f"{proxy}/kf/account/list", json={"offset": 0, "limit": 100})
    refused(anonymous, 403)
    proven = await world.http.post(
        f"{proxy}/kf/account/list",
        params={"corpid": world.corpid, "kfid": world.kf},
        headers={"authorization": f"Bearer {secret}"},
        json={"offset": 0, "limit": 100},
    )
    assert proven.status_code == 200
    assert proven.json()["errcode"] == 0
    assert world.kf in {a["open_kfid"] for a in proven.json()["account_list"]}
    other_api = await world.http.post(
        f"{proxy}/user/get",
        params={"corpid": world.corpid, "kfid": world.kf},
        headers={"authorization": f"Bearer {secret}"},
    )
    refused(other_api, 403)


async def test_puppet_down_during_a_stream_gets_everything_in_order_once(world: World) -> None:
    """The puppet is unreachable while 30 messages arrive and 2 simulated minutes pass."""
    puppet = world.puppet()
    port = free_port()
    async with serve_app(puppet.app(), port=port) as puppet_url:
        assert (await puppet.register(world.hub_url, puppet_url)).json()["code"] == 0
        await world.customer_says("before")
        await puppet.wait_for_texts(1)
    # the puppet process is gone: connections are refused
    for n in range(30):
        await world.customer_says(f"during-{n:02d}")
    await world.advance_sim_clock(120)
    assert puppet.texts == ["before"]
    async with serve_app(puppet.app(), port=port):  # back: a probe sees it, the queue flows at once
        texts = await puppet.wait_for_texts(31)
    assert texts == ["before"] + [f"during-{n:02d}" for n in range(30)]
    assert len(puppet.handled) == len(set(puppet.handled))  # none twice at the handler level


def lose_first_delivery(puppet: NodePuppet) -> tuple[asyncio.Event, asyncio.Event]:
    """The puppet's first delivery hangs (``held`` is set: the manager is mid-dispatch) until
    ``release``, then is dropped without pulling: only a later delivery can bring the messages."""
    held, release = asyncio.Event(), asyncio.Event()
    original = puppet.pull

    async def slow_pull(token: str) -> None:
        if not held.is_set():
            held.set()
            await release.wait()
            return
        await original(token)

    puppet.pull = slow_pull  # type: ignore[method-assign]
    return held, release


async def five_messages_across_a_kill(
    world: World,
    register_at: str,
    kill: Callable[[], None],
    then: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """A puppet registers at ``register_at``; five customer messages; ``kill`` runs while the first
    delivery is in flight, and that delivery is lost (:func:`lose_first_delivery`), then ``then``.
    The puppet must still handle all five, in order, none twice."""
    puppet = world.puppet()
    held, release = lose_first_delivery(puppet)
    async with serve_app(puppet.app(), graceful=0.1) as puppet_url:
        assert (await puppet.register(register_at, puppet_url)).json()["code"] == 0
        for n in range(5):
            await world.customer_says(f"m{n}")
        async with asyncio.timeout(10):
            await held.wait()
        kill()  # SIGKILL while a delivery is in flight
        release.set()
        if then is not None:
            await then()
        assert await puppet.wait_for_texts(5) == [f"m{n}" for n in range(5)]
    assert len(puppet.handled) == len(set(puppet.handled))


async def test_sigkill_of_the_manager_mid_dispatch_loses_nothing(
    settings: Settings, simulator: tuple[str, SimState], tmp_path: Path
) -> None:
    sim_url, _ = simulator
    env = service_env(
        settings,
        tmp_path / "data",
        wxkf_admin_token=ADMIN,
        wxkf_replica_id="manager-crash-test",
        wecom_api_base=sim_url + "/cgi-bin",
    )
    hub = ServiceProcess("up", env, tmp_path / "hub.log", free_port())
    await hub.start()
    async with httpx.AsyncClient(timeout=30) as http:
        corp = await make_corp(http, sim_url, hub.url + "/callback/{corpid}")
        world = World(sim_url, hub.url, http, SimState(), None, **corp)
        try:
            # restarted under the same replica id: it reclaims its leases and redelivers
            await five_messages_across_a_kill(world, hub.url, hub.kill, then=hub.start)
        finally:
            hub.stop()
    log = (tmp_path / "hub.log").read_text()
    assert world.secret not in log and world.aes_key not in log
    assert json.dumps(world.token) not in log


async def test_a_second_manager_process_takes_over_a_killed_ones_undelivered_events(
    settings: Settings, simulator: tuple[str, SimState], tmp_path: Path
) -> None:
    """Two ``wxkf manager`` processes on one database; the one serving the account is SIGKILLed
    mid-delivery and never comes back. The other claims its replica and delivers what it owed."""
    sim_url, _ = simulator

    def manager(name: str) -> ServiceProcess:
        env = service_env(
            settings,
            tmp_path / name,
            wxkf_admin_token=ADMIN,
            wxkf_replica_id=f"manager-{name}",
            wxkf_replica_timeout="2",
            wecom_api_base=sim_url + "/cgi-bin",
        )
        return ServiceProcess("manager", env, tmp_path / f"{name}.log", free_port())

    first, second = manager("first"), manager("second")
    await first.start()
    await second.start()
    async with httpx.AsyncClient(timeout=30) as http:
        corp = await make_corp(http, sim_url, first.url + "/callback/{corpid}")
        world = World(sim_url, first.url, http, SimState(), None, **corp)
        try:
            await five_messages_across_a_kill(world, first.url, first.kill)  # the second delivers
        finally:
            first.stop()
            second.stop()
    assert "took over manager replica manager-first" in (tmp_path / "second.log").read_text()


async def test_deregister_keeps_the_queue_and_reregistering_flows_it(world: World) -> None:
    puppet = world.puppet()
    async with serve_app(puppet.app()) as puppet_url:
        secret = (await puppet.register(world.hub_url, puppet_url)).json()["webhookSecret"]
        anonymous = await world.http.post(
            f"{world.hub_url}/puppetWxkfManager/deregister", json={"kfId": world.kf, "corpId": world.corpid}
        )
        refused(anonymous, 403)  # the Node manager let anyone do this
        left = await world.http.post(
            f"{world.hub_url}/puppetWxkfManager/deregister",
            headers={"authorization": f"Bearer {secret}"},
            json={"kfId": world.kf, "kfName": "", "corpId": world.corpid},
        )
        assert left.json() == {"code": 0, "message": "success"}
        await world.customer_says("while away")
        info = (
            await world.http.get(
                f"{world.hub_url}/puppetWxkfManager/puppetWxkfInfo/{world.kf}",
                headers={"authorization": f"Bearer {secret}"},
            )
        ).json()
        assert info["online"] is False and info["registered"] is False
        assert puppet.texts == []
        assert (await puppet.register(world.hub_url, puppet_url)).json()["code"] == 0
        assert await puppet.wait_for_texts(1) == ["while away"]


async def test_heartbeat_needs_the_puppet_secret_and_revives_it(world: World) -> None:
    assert world.hub is not None and world.hub.manager is not None
    manager = world.hub.manager
    puppet = world.puppet()
    async with serve_app(puppet.app()) as puppet_url:
        secret = (await puppet.register(world.hub_url, puppet_url)).json()["webhookSecret"]
        beat = f"{world.hub_url}/puppetWxkfManager/heartbeat"
        body = {"corpId": world.corpid, "kfId": world.kf}
        refused(await world.http.post(beat, json=body), 403)
        refused(await world.http.post(beat, json=body, headers={"authorization": "Bearer whsec_wrong"}), 403)
        key = f"{world.corpid}/{world.kf}"
        await manager.puppets.mark_offline(key, probe_at=1e12, failures=0)  # offline; no probe for ages
        await world.customer_says("queued for an offline puppet")
        ok = await world.http.post(beat, json=body, headers={"authorization": f"Bearer {secret}"})
        assert ok.json() == {"code": 0, "message": "success", "upPeriod": manager.up_period}
        assert await puppet.wait_for_texts(1) == ["queued for an offline puppet"]
