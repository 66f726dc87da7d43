"""The gateway end to end over real sockets: verification, durable intake, forwarding, retries, takeover."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl

import httpx

from gateway.inbox import COLLECTION as INBOX
from gateway.inbox import new_document
from gateway.intake import CallbackEvent, open_callback
from gateway.registry import AppRegistry
from gateway.service import Gateway
from tests.gateway.conftest import ADMIN, RunningGateway, make_gateway
from tests.support.clock import FakeClock
from tests.support.wecom_callbacks import CorpAppKeys, kf_event_xml, signed_echo, signed_post
from wecom.xml import build_xml
from wxkf import webhooks
from wxkf.runtime import Runtime


async def opened(registry: AppRegistry, keys: CorpAppKeys, plaintext: str) -> CallbackEvent:
    """A callback decrypted and verified the way the route does it."""
    query, body = signed_post(keys, plaintext)
    return await open_callback(registry, keys.corp_id, None, dict(parse_qsl(query)), query, body)


async def post_callback(gw: RunningGateway, plaintext: str, path: str | None = None) -> httpx.Response:
    query, body = signed_post(gw.keys, plaintext)
    return await gw.http.post(
        f"{path or '/callback/' + gw.keys.corp_id}?{query}",
        content=body,
        headers={"content-type": "text/xml"},
    )


async def test_url_verification_answers_the_plaintext_exactly(gw: RunningGateway) -> None:
    response = await gw.http.get(f"/callback/{gw.keys.corp_id}?{signed_echo(gw.keys, '1616140317555161061')}")
    assert response.status_code == 200
    assert response.content == b"1616140317555161061"


async def test_kf_callback_is_stored_then_forwarded_to_the_manager(gw: RunningGateway) -> None:
    response = await post_callback(gw, kf_event_xml(gw.keys.corp_id, "wkAAA", "sync-token-1"))
    assert response.status_code == 200
    assert response.text == "success"
    [delivery] = await gw.listener.wait_for(1)
    assert delivery["path"] == f"/callback/decrypted/{gw.keys.corp_id}"
    body = json.loads(delivery["body"])
    assert body["token"] == "sync-token-1"
    assert body["openKfId"] == "wkAAA"
    doc = await gw.gateway.inbox.get(body["eventId"])
    assert doc is not None
    assert doc["open_kf_id"] == "wkAAA"


async def test_wecom_retries_of_one_callback_make_one_event(gw: RunningGateway) -> None:
    plaintext = kf_event_xml(gw.keys.corp_id, "wkAAA", "sync-token-2", create_time=1700000000)
    for _ in range(3):  # each retry is encrypted afresh, as WeCom does
        assert (await post_callback(gw, plaintext)).status_code == 200
    await gw.listener.wait_for(1)
    assert await gw.gateway.inbox._collection.count_documents({}) == 1
    assert len(gw.listener.received) == 1


async def test_named_app_route_and_default_route(gw: RunningGateway, runtime: Runtime) -> None:
    other = CorpAppKeys.random(gw.keys.corp_id)
    await gw.gateway.registry.add(other.corp_id, "second", other.token, other.aes_key)
    query, body = signed_post(other, kf_event_xml(other.corp_id, "wkBBB", "t"))
    ok = await gw.http.post(f"/callback/{other.corp_id}/second?{query}", content=body)
    assert ok.status_code == 200
    # the default route still belongs to the first app: the second app's signature fails there
    wrong = await gw.http.post(f"/callback/{other.corp_id}?{query}", content=body)
    assert wrong.status_code == 403


async def test_manager_outage_is_retried_until_acknowledged(gw: RunningGateway) -> None:
    gw.listener.status = 503
    for n in range(5):
        response = await post_callback(gw, kf_event_xml(gw.keys.corp_id, "wkAAA", f"tok-{n}"))
        assert response.status_code == 200  # answered at once, whatever the manager does
    # a first wave of 5, then backoff probes one at a time, beyond the schedule's total time:
    # forwards to the manager are never dead-lettered
    await gw.listener.wait_for_attempts(12)
    assert gw.gateway.forwarder.backlog == 5
    gw.listener.status = 200
    received = await gw.listener.wait_for(5)
    assert sorted(json.loads(r["body"])["token"] for r in received) == [f"tok-{n}" for n in range(5)]


async def test_subscription_secret_is_shown_once_at_creation(gw: RunningGateway) -> None:
    created = await gw.http.post(
        "/admin/subscriptions",
        headers={"authorization": f"Bearer {ADMIN}"},
        json={"url": "http://127.0.0.1:1/unused", "event_types": ["change_contact"]},
    )
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    assert secret.startswith("whsec_")
    listing = await gw.http.get("/admin/subscriptions", headers={"authorization": f"Bearer {ADMIN}"})
    assert listing.json()["subscriptions"][0]["event_types"] == ["change_contact"]
    assert secret not in listing.text
    refused = await gw.http.post(
        "/admin/subscriptions",
        headers={"authorization": f"Bearer {ADMIN}"},
        json={"url": "http://169.254.169.254/latest/meta-data"},
    )
    assert refused.status_code == 400
    assert "link-local" in refused.json()["error"]


async def test_subscription_delivery_is_signed_per_standard_webhooks(
    runtime: Runtime, listener, keys: CorpAppKeys
) -> None:
    recorder, url = listener
    gateway = make_gateway(runtime, None)
    await gateway.start()
    try:
        await gateway.registry.add(keys.corp_id, None, keys.token, keys.aes_key)
        subscription = await gateway.subscriptions.add(url + "/events", event_types=["change_contact"])
        plaintext = build_xml(
            {"ToUserName": keys.corp_id, "MsgType": "event", "Event": "change_contact", "UserID": "zhangsan"}
        )
        event = await opened(gateway.registry, keys, plaintext)
        assert await gateway.accept(event)
        [delivery] = await recorder.wait_for(1)
        webhooks.verify(subscription.secret, delivery["headers"], delivery["body"])
        payload = json.loads(delivery["body"])
        assert payload["type"] == "change_contact"
        assert payload["event"]["UserID"] == "zhangsan"
        assert delivery["headers"]["webhook-id"] == event.id
    finally:
        await gateway.stop()


async def test_unsubscribed_events_are_stored_and_acknowledged(gw: RunningGateway) -> None:
    plaintext = build_xml({"ToUserName": gw.keys.corp_id, "MsgType": "event", "Event": "change_contact"})
    response = await post_callback(gw, plaintext)
    assert response.status_code == 200
    doc = await gw.gateway.inbox._collection.find_one({"event_type": "change_contact"})
    assert doc is not None
    assert doc["state"] == "unrouted"
    assert doc["expire_at"] > datetime.now(UTC) + timedelta(days=6)  # kept a week, then purged


async def test_pending_events_never_expire_and_finished_ones_do(gw: RunningGateway) -> None:
    gw.listener.status = 503
    await post_callback(gw, kf_event_xml(gw.keys.corp_id, "wkAAA", "tok-ttl"))
    await gw.listener.wait_for_attempts(1)
    [pending] = [doc async for doc in gw.gateway.inbox._collection.find({})]
    assert pending["state"] == "pending" and "expire_at" not in pending
    gw.listener.status = 200
    async with asyncio.timeout(10):
        await gw.gateway.forwarder.wait_idle()
    await gw.gateway.forwarder.close()  # flushes the batched state updates
    done = await gw.gateway.inbox.get(pending["_id"])
    assert done is not None and done["state"] == "done" and done["expire_at"] > datetime.now(UTC)


async def test_restart_forwards_what_a_crashed_run_left(
    runtime: Runtime, listener, keys: CorpAppKeys
) -> None:
    recorder, url = listener
    recorder.status = 503
    first = make_gateway(runtime, url, replica="gw-1")
    await first.start()
    await first.registry.add(keys.corp_id, None, keys.token, keys.aes_key)
    for n in range(3):
        event = await opened(first.registry, keys, kf_event_xml(keys.corp_id, "wkAAA", f"tok-{n}"))
        assert await first.accept(event)
    await first.stop()  # as good as a crash: nothing was forwarded
    assert await runtime.db[INBOX].count_documents({"state": "pending"}) == 3
    recorder.status = 200
    second = make_gateway(runtime, url, replica="gw-1")
    await second.start()
    try:
        received = await recorder.wait_for(3)
        assert sorted(json.loads(r["body"])["token"] for r in received) == ["tok-0", "tok-1", "tok-2"]
    finally:
        await second.stop()


async def test_a_live_replica_takes_over_a_dead_ones_events(
    runtime: Runtime, listener, keys: CorpAppKeys
) -> None:
    recorder, url = listener
    recorder.status = 503
    clock = FakeClock()
    dead = Gateway(
        runtime.db,
        runtime.box,
        runtime.http,
        make_gateway(runtime, url, replica="gw-dead").config,
        manager_sink=None,
        clock=clock,
    )
    await dead.start()
    await dead.registry.add(keys.corp_id, None, keys.token, keys.aes_key)

    event = await opened(dead.registry, keys, kf_event_xml(keys.corp_id, "wkAAA", "orphan"))
    await dead.inbox.store(new_document(event, ["manager"], "gw-dead", clock()))
    await dead.stop()
    recorder.status = 200
    clock.advance(120)  # gw-dead's heartbeat is now stale
    live = Gateway(
        runtime.db,
        runtime.box,
        runtime.http,
        make_gateway(runtime, url, replica="gw-live").config,
        manager_sink=make_gateway(runtime, url).manager_sink,
        clock=clock,
    )
    await live.start()
    try:
        await live._liveness()
        [delivery] = await recorder.wait_for(1)
        assert json.loads(delivery["body"])["token"] == "orphan"
        doc = await runtime.db[INBOX].find_one({"_id": event.id})
        assert doc is not None and doc["owner"] == "gw-live"
    finally:
        await live.stop()


async def test_admin_api_never_shows_secrets(gw: RunningGateway) -> None:
    auth = {"authorization": f"Bearer {ADMIN}"}
    assert (await gw.http.get("/admin/apps")).status_code == 401
    assert (await gw.http.get("/admin/apps", headers={"authorization": "Bearer nope"})).status_code == 401
    listing = await gw.http.get("/admin/apps", headers=auth)
    assert listing.status_code == 200
    text = listing.text
    for secret in (gw.keys.token, gw.keys.aes_key, "corp-secret-123"):
        assert secret not in text
    [app] = listing.json()["apps"]
    assert app["callback_path"] == f"/callback/{gw.keys.corp_id}"
    assert app["has_secret"] is True
    bad = await gw.http.post(
        "/admin/apps", headers=auth, json={"corp_id": "ww1", "token": "t", "encoding_aes_key": "x"}
    )
    assert bad.status_code == 400
    assert "encoding_aes_key" in bad.json()["error"]
