"""The gateway's forwarder against a real manager-like server on a real socket and the real database:
transient failures are retried, permanent refusals dead-lettered (visible, replayable), a failing database
write costs neither the events nor the worker, and a failing manager is probed at a bounded interval."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pymongo.errors import AutoReconnect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway.app import gateway_app
from gateway.inbox import DEAD, DONE, new_document
from gateway.service import Gateway, GatewayConfig
from tests.gateway.conftest import ADMIN, make_gateway
from tests.gateway.test_gateway import opened
from tests.support.clock import FakeClock
from tests.support.servers import serve_app
from tests.support.wecom_callbacks import CorpAppKeys, kf_event_xml
from wecom.xml import build_xml
from wxkf.retry import RetrySchedule
from wxkf.runtime import Runtime

AUTH = {"authorization": f"Bearer {ADMIN}"}
HANG = -1  # an answer code for "hold the request until released"


@dataclass
class Receiver:
    """A manager (or subscriber) whose answer per request is ``answer(token)``: a status, or HANG."""

    answer: Callable[[str], int] = lambda token: 200
    acknowledged: list[str] = field(default_factory=list)
    attempts: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: Request) -> Response:
        body = json.loads(await request.body())
        token = body.get("token") or body.get("event", {}).get("token") or body.get("type", "")
        status = self.answer(token)
        if status == HANG:
            await self.release.wait()
            status = 200
        async with self.changed:
            self.attempts.append(token)
            if 200 <= status < 300:
                self.acknowledged.append(token)
            self.changed.notify_all()
        headers = {"location": "http://127.0.0.2:9/elsewhere"} if 300 <= status < 400 else None
        return PlainTextResponse(f"answer {status}", status_code=status, headers=headers)

    async def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.handle, methods=["POST"])])


@dataclass
class Setup:
    gateway: Gateway
    receiver: Receiver
    url: str
    keys: CorpAppKeys
    admin: httpx.AsyncClient

    async def callback(self, token: str) -> str:
        event = await opened(self.gateway.registry, self.keys, kf_event_xml(self.keys.corp_id, "wkA", token))
        assert await self.gateway.accept(event)
        return event.id


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    receiver = Receiver()
    try:
        async with serve_app(receiver.app()) as url:
            yield receiver, url
    finally:
        receiver.release.set()


@pytest.fixture
def config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """GatewayConfig fields for ``setup`` (parametrize it ``indirect=True`` to change them); a
    ``schedule`` replaces the forwarder's retry schedule."""
    return {"manager_probe_interval": 0.05, **getattr(request, "param", {})}


@pytest.fixture
async def setup(runtime: Runtime, receiver: tuple[Receiver, str], config: dict[str, Any]) -> Any:
    """A started gateway forwarding kf events to ``receiver``, with its admin API on a real socket."""
    recv, url = receiver
    schedule = config.pop("schedule", None)
    gateway = make_gateway(runtime, url, **config)
    if schedule is not None:
        gateway.forwarder._schedule = schedule
    keys = CorpAppKeys.random()
    await gateway.start()
    await gateway.registry.add(keys.corp_id, None, keys.token, keys.aes_key)
    try:
        async with (
            serve_app(gateway_app(gateway, ADMIN)) as gw_url,
            httpx.AsyncClient(base_url=gw_url) as admin,
        ):
            yield Setup(gateway, recv, url, keys, admin)
    finally:
        await gateway.stop()


class FlakyWrites:
    """The inbox's real collection, except that ``update_one`` fails while ``failing`` is set."""

    def __init__(self, collection: Any) -> None:
        self._collection = collection
        self.failing = True
        self.failed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)

    async def update_one(self, *args: Any, **kwargs: Any) -> Any:
        if self.failing:
            self.failed += 1
            raise AutoReconnect("connection to the database reset")
        return await self._collection.update_one(*args, **kwargs)


async def test_a_failed_database_write_costs_neither_the_events_nor_the_worker(setup: Setup) -> None:
    inbox = setup.gateway.inbox
    flaky = inbox._collection = FlakyWrites(inbox._collection)
    setup.receiver.answer = lambda token: 503
    for n in range(3):
        await setup.callback(f"early-{n}")
    await setup.receiver.wait(lambda: len(setup.receiver.attempts) >= 4)  # a wave, then a probe
    assert flaky.failed >= 1  # recording the first wave's failed attempts failed
    flaky.failing = False
    setup.receiver.answer = lambda token: 200
    await setup.callback("late")
    await setup.receiver.wait(lambda: len(setup.receiver.acknowledged) == 4)
    assert sorted(setup.receiver.acknowledged) == ["early-0", "early-1", "early-2", "late"]


@pytest.mark.parametrize("status", [400, 401, 404, 307])
async def test_a_permanent_refusal_is_dead_lettered_and_blocks_nothing(setup: Setup, status: int) -> None:
    setup.receiver.answer = lambda token: status if token == "poison" else 200
    poison = await setup.callback("poison")
    await setup.receiver.wait(lambda: "poison" in setup.receiver.attempts)
    for n in range(3):
        await setup.callback(f"after-{n}")
    await setup.receiver.wait(lambda: len(setup.receiver.acknowledged) == 3)
    async with asyncio.timeout(10):
        await setup.gateway.forwarder.wait_idle()
    assert setup.receiver.attempts.count("poison") == 1  # refused for good: not sent again
    await setup.gateway.forwarder.flush()

    listing = (await setup.admin.get("/admin/dead-letters", headers=AUTH)).json()
    [dead] = listing["dead_letters"]
    assert dead["id"] == poison and f"HTTP {status}" in dead["targets"]["manager"]
    shown = (await setup.admin.get(f"/admin/events/{poison}", headers=AUTH)).json()
    assert shown["state"] == DEAD and shown["store"] == "inbox"
    assert f"HTTP {status}" in shown["targets"]["manager"]["error"]

    setup.receiver.answer = lambda token: 200  # the operator fixed the manager's side
    replayed = await setup.admin.post(f"/admin/events/{poison}/replay", headers=AUTH)
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["targets"] == ["manager"]
    await setup.receiver.wait(lambda: "poison" in setup.receiver.acknowledged)
    async with asyncio.timeout(10):
        await setup.gateway.forwarder.wait_idle()
    await setup.gateway.forwarder.flush()
    doc = await setup.gateway.inbox.get(poison)
    assert doc is not None and doc["state"] == DONE
    assert (await setup.admin.get("/admin/dead-letters", headers=AUTH)).json()["dead_letters"] == []
    again = await setup.admin.post(f"/admin/events/{poison}/replay", headers=AUTH)
    assert again.status_code == 404


@pytest.mark.parametrize("status", [500, 503, 408, 425, 429, HANG])
async def test_transient_failures_are_retried_until_acknowledged(setup: Setup, status: int) -> None:
    assert setup.gateway.manager_sink is not None
    setup.gateway.manager_sink = dataclasses.replace(setup.gateway.manager_sink, timeout=0.2)
    failures = 2
    answers = iter([status] * failures)
    setup.receiver.answer = lambda token: next(answers, 200)
    await setup.callback("flaky")
    await setup.receiver.wait(lambda: "flaky" in setup.receiver.acknowledged)
    assert setup.receiver.attempts[-1] == "flaky"
    await setup.gateway.forwarder.flush()
    assert await setup.gateway.inbox._dead_letters.count_documents({}) == 0


@pytest.mark.parametrize(
    "config", [{"schedule": RetrySchedule((3600.0, 7200.0, 36000.0), jitter=0.0)}], indirect=True
)
async def test_a_failing_manager_is_probed_at_the_capped_interval_not_hours_later(setup: Setup) -> None:
    answers = iter([503, 503, 503])
    setup.receiver.answer = lambda token: next(answers, 200)
    await setup.callback("after-outage")
    # the schedule alone would wait an hour, then two: the probe interval caps it
    await setup.receiver.wait(lambda: "after-outage" in setup.receiver.acknowledged)
    assert setup.receiver.attempts == ["after-outage"] * 4


async def test_a_deleted_subscriptions_events_are_dead_lettered_and_its_worker_ends(setup: Setup) -> None:
    gateway = setup.gateway
    setup.receiver.answer = lambda token: 503
    subscription = await gateway.subscriptions.add(setup.url + "/events", event_types=["change_contact"])
    plaintext = build_xml({"ToUserName": setup.keys.corp_id, "MsgType": "event", "Event": "change_contact"})
    event = await opened(gateway.registry, setup.keys, plaintext)
    assert await gateway.accept(event)
    await setup.receiver.wait(lambda: len(setup.receiver.attempts) >= 1)
    worker = gateway.forwarder._targets[subscription.target].task
    assert worker is not None

    await gateway.subscriptions.remove(subscription.id)
    async with asyncio.timeout(10):
        await worker  # its queued event is dead-lettered on the next probe, then the worker ends
    assert subscription.target not in gateway.forwarder.targets
    await gateway.forwarder.flush()
    [dead] = await gateway.inbox.dead_letters()
    assert dead["targets"][subscription.target] == "target no longer exists"


async def test_an_idle_worker_ends_when_its_subscription_is_deleted(setup: Setup) -> None:
    gateway = setup.gateway
    subscription = await gateway.subscriptions.add(setup.url + "/events", event_types=["change_contact"])
    plaintext = build_xml({"ToUserName": setup.keys.corp_id, "MsgType": "event", "Event": "change_contact"})
    assert await gateway.accept(await opened(gateway.registry, setup.keys, plaintext))
    await setup.receiver.wait(lambda: len(setup.receiver.acknowledged) == 1)
    worker = gateway.forwarder._targets[subscription.target].task
    assert worker is not None

    # deleted through another replica: this one learns it at its next reload
    await gateway.subscriptions._collection.delete_one({"_id": subscription.id})
    await gateway._reload()
    async with asyncio.timeout(10):
        await worker
    assert gateway.forwarder.targets == []


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=1001", "limit=abc", "limit=" + "9" * 5000, "after=x", "after=%00"]
)
async def test_dead_letter_paging_refuses_bad_parameters(setup: Setup, query: str) -> None:
    response = await setup.admin.get(f"/admin/dead-letters?{query}", headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"].split(":")[0] in ("limit", "after")


async def test_dead_letters_page_in_the_order_they_were_given_up(setup: Setup) -> None:
    setup.receiver.answer = lambda token: 410
    ids = [await setup.callback(f"gone-{n}") for n in range(5)]
    async with asyncio.timeout(10):
        await setup.gateway.forwarder.wait_idle()
    await setup.gateway.forwarder.flush()
    seen: list[str] = []
    after = ""
    while True:
        page = (await setup.admin.get(f"/admin/dead-letters?limit=2&after={after}", headers=AUTH)).json()
        seen.extend(d["id"] for d in page["dead_letters"])
        if page["next"] is None:
            break
        after = page["next"]
    assert sorted(seen) == sorted(ids) and len(seen) == 5


async def test_every_dead_letter_of_a_refusing_manager_is_replayed_at_once_after_the_fix(
    setup: Setup,
) -> None:
    setup.receiver.answer = lambda token: 403  # e.g. the manager wants a gateway token we do not send
    for n in range(5):
        await setup.callback(f"refused-{n}")
    async with asyncio.timeout(10):
        await setup.gateway.forwarder.wait_idle()
    await setup.gateway.forwarder.flush()
    setup.receiver.answer = lambda token: 200
    some = await setup.admin.post("/admin/dead-letters/replay", json={"limit": 2}, headers=AUTH)
    assert some.json() == {"replayed": 2, "more": True}
    other = await setup.admin.post("/admin/dead-letters/replay", json={"target": "sub:none"}, headers=AUTH)
    assert other.json() == {"replayed": 0, "more": False}  # nothing dead for that target
    rest = await setup.admin.post("/admin/dead-letters/replay", json={"target": "manager"}, headers=AUTH)
    assert rest.json() == {"replayed": 3, "more": False}
    await setup.receiver.wait(lambda: len(setup.receiver.acknowledged) == 5)
    assert sorted(setup.receiver.acknowledged) == sorted(f"refused-{n}" for n in range(5))
    for bad in ({"limit": 0}, {"limit": 1001}, {"target": ""}, {"target": "x" * 81}, [1]):
        refused = await setup.admin.post("/admin/dead-letters/replay", json=bad, headers=AUTH)
        assert refused.status_code == 400, bad


async def test_a_taken_over_event_for_a_subscription_made_on_the_dead_replica_is_delivered(
    runtime: Runtime, receiver: tuple[Receiver, str]
) -> None:
    recv, url = receiver
    clock = FakeClock()
    keys = CorpAppKeys.random()
    live = Gateway(runtime.db, runtime.box, runtime.http, GatewayConfig(replica_id="gw-live"), clock=clock)
    await live.start()  # its subscriptions are loaded now, before the other replica makes one
    dead = Gateway(runtime.db, runtime.box, runtime.http, GatewayConfig(replica_id="gw-dead"), clock=clock)
    await dead.start()
    try:
        await dead.registry.add(keys.corp_id, None, keys.token, keys.aes_key)
        await dead.subscriptions.add(url + "/events", event_types=["change_contact"])
        plaintext = build_xml({"ToUserName": keys.corp_id, "MsgType": "event", "Event": "change_contact"})
        event = await opened(dead.registry, keys, plaintext)
        targets = dead.targets_for(event)
        await dead.inbox.store(new_document(event, targets, "gw-dead", clock()))  # stored, never sent
    finally:
        await dead.stop()
    try:
        clock.advance(120)  # gw-dead's heartbeat is stale
        await live._liveness()
        await recv.wait(lambda: len(recv.acknowledged) == 1)
        await live.forwarder.flush()
        assert await live.inbox.dead_letters() == []
    finally:
        await live.stop()
