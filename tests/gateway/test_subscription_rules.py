"""Subscription deliveries obey the endpoint rules when they are made, not only when the subscription
was created: the allow-list may have narrowed since, or the name may now point elsewhere (DNS
rebinding); and a subscriber's redirect is never followed."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.intake import open_callback
from gateway.service import Gateway
from tests.gateway.conftest import make_gateway
from tests.support.bystander import bystander
from tests.support.recorder import Recorder
from tests.support.servers import serve_app
from tests.support.wecom_callbacks import CorpAppKeys, signed_post
from wecom.xml import build_xml
from wxkf.delivery import DeliveryError
from wxkf.runtime import Runtime

ELSEWHERE = (ipaddress.ip_network("10.0.0.0/8"),)
ONLY_127_0_0_1 = (ipaddress.ip_network("127.0.0.1/32"),)


class Outcomes:
    """What each subscription delivery attempt ended with (None: acknowledged), awaited by tests."""

    def __init__(self, gateway: Gateway) -> None:
        self.results: list[BaseException | None] = []
        self.changed = asyncio.Event()
        post = gateway.deliveries.post

        async def watched(*args: Any, **kwargs: Any) -> None:
            try:
                await post(*args, **kwargs)
            except BaseException as exc:
                self.results.append(exc)
                raise
            else:
                self.results.append(None)
            finally:
                self.changed.set()

        gateway.deliveries.post = watched  # type: ignore[method-assign]

    async def first(self, timeout: float = 10.0) -> BaseException | None:
        async with asyncio.timeout(timeout):
            await self.changed.wait()
        return self.results[0]


async def contact_change(gateway: Gateway, keys: CorpAppKeys) -> None:
    plaintext = build_xml(
        {"ToUserName": keys.corp_id, "MsgType": "event", "Event": "change_contact", "UserID": "lisi"}
    )
    query, body = signed_post(keys, plaintext)
    event = await open_callback(gateway.registry, keys.corp_id, None, dict(parse_qsl(query)), query, body)
    assert await gateway.accept(event)


async def test_a_subscription_outside_todays_allowed_networks_receives_nothing(
    runtime: Runtime, listener: tuple[Recorder, str], keys: CorpAppKeys
) -> None:
    recorder, url = listener
    gateway = make_gateway(runtime, None, allowed_networks=ELSEWHERE)
    outcomes = Outcomes(gateway)
    await gateway.start()
    try:
        await gateway.registry.add(keys.corp_id, None, keys.token, keys.aes_key)
        # created when the rules allowed it (the allow-list was wider, or the name pointed elsewhere)
        await gateway.subscriptions.add(url.replace("127.0.0.1", "localhost") + "/events")
        await contact_change(gateway, keys)
        refused = await outcomes.first()
        assert isinstance(refused, DeliveryError) and "refused address" in str(refused)
    finally:
        await gateway.stop()
    assert recorder.attempts == 0 and recorder.received == []


async def test_a_subscribers_redirect_is_a_permanent_failure_and_is_not_followed(
    runtime: Runtime, keys: CorpAppKeys
) -> None:
    async with bystander("127.0.0.2") as (elsewhere, seen):

        async def redirect(request: Request) -> Response:
            await request.body()
            return Response(status_code=307, headers={"location": elsewhere + "/events"})

        app = Starlette(routes=[Route("/events", redirect, methods=["POST"])])
        async with serve_app(app) as url:
            gateway = make_gateway(runtime, None, allowed_networks=ONLY_127_0_0_1)
            outcomes = Outcomes(gateway)
            await gateway.start()
            try:
                await gateway.registry.add(keys.corp_id, None, keys.token, keys.aes_key)
                await gateway.subscriptions.add(url + "/events", allowed_networks=ONLY_127_0_0_1)
                await contact_change(gateway, keys)
                failed = await outcomes.first()
            finally:
                await gateway.stop()
    assert isinstance(failed, DeliveryError) and failed.status == 307 and failed.permanent
    assert "127.0.0.2" in str(failed)  # the reason names where it wanted the event to go
    assert seen == []
