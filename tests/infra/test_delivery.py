"""Outbound deliveries: a verdict per request, no redirects, the endpoint rules where the socket goes,
and a per-host queue that never counts against a request's timeout."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tests.support.bystander import bystander
from tests.support.servers import serve_app
from tests.support.services import free_port
from wxkf import webhooks
from wxkf.delivery import DeliveryClient, DeliveryError, Unreachable

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
ONLY_127_0_0_1 = (ipaddress.ip_network("127.0.0.1/32"),)
ELSEWHERE = (ipaddress.ip_network("10.0.0.0/8"),)
_SECRET = webhooks.generate_secret()


def receiver(status: int, received: list[bytes]) -> Starlette:
    async def callback(request: Request) -> PlainTextResponse:
        received.append(await request.body())
        return PlainTextResponse("success" if status < 300 else "nope", status_code=status)

    return Starlette(routes=[Route("/callback", callback, methods=["GET", "POST"])])


async def test_a_2xx_is_delivered_by_host_name_and_anything_else_says_why() -> None:
    received: list[bytes] = []
    async with DeliveryClient(LOOPBACK) as client:
        async with serve_app(receiver(200, received)) as url:
            by_name = url.replace("127.0.0.1", "localhost") + "/callback"
            await client.post(by_name, b"<xml/>", content_type="application/xml", timeout=5)
            assert received == [b"<xml/>"]
            assert await client.reachable(by_name)
        async with serve_app(receiver(503, received)) as url:
            with pytest.raises(DeliveryError, match="HTTP 503") as failed:
                await client.post(url + "/callback", b"x", content_type="text/plain", timeout=5)
            assert not isinstance(failed.value, Unreachable)  # it answered: back off, do not park
            assert failed.value.status == 503 and not failed.value.permanent


async def test_a_signed_delivery_carries_standard_webhooks_headers() -> None:
    seen: list[Request] = []

    async def callback(request: Request) -> Response:
        await request.body()
        seen.append(request)
        return PlainTextResponse("ok")

    secret = webhooks.generate_secret()
    app = Starlette(routes=[Route("/hook", callback, methods=["POST"])])
    async with DeliveryClient() as client, serve_app(app) as url:
        await client.post(url + "/hook", b'{"a":1}', content_type="application/json", event_id="ev-1")
        await client.post(
            url + "/hook", b'{"a":2}', content_type="application/json", event_id="ev-2", secret=secret
        )
    unsigned, signed = (dict(request.headers) for request in seen)
    assert unsigned["webhook-id"] == "ev-1" and "webhook-signature" not in unsigned
    assert signed["content-type"] == "application/json" and signed["webhook-id"] == "ev-2"
    webhooks.verify(secret, signed, b'{"a":2}')


@pytest.mark.parametrize(
    ("status", "permanent"),
    [
        *((status, True) for status in (400, 403, 404, 410)),
        *((status, False) for status in (408, 425, 429, 500, 502, 503)),
    ],
)
async def test_a_refusal_is_permanent_unless_retrying_can_help(status: int, permanent: bool) -> None:
    async with DeliveryClient() as client, serve_app(receiver(status, [])) as url:
        with pytest.raises(DeliveryError) as failed:
            await client.post(url + "/callback", b"x", content_type="text/plain")
    assert (failed.value.status, failed.value.permanent) == (status, permanent)


async def test_a_redirect_is_a_permanent_failure_and_is_never_followed() -> None:
    """SSRF: a target inside the allowed networks must not bounce the event (and its signature) to
    an address nobody checked. The bystander on 127.0.0.2 must see no connection at all."""
    async with bystander("127.0.0.2") as (elsewhere, seen):

        async def redirect(request: Request) -> Response:
            await request.body()
            return Response(status_code=307, headers={"location": elsewhere + "/callback"})

        app = Starlette(routes=[Route("/callback", redirect, methods=["GET", "POST"])])
        async with serve_app(app) as url:
            for allowed in (ONLY_127_0_0_1, ()):
                async with DeliveryClient(allowed) as client:
                    with pytest.raises(
                        DeliveryError, match=r"redirect to .*127\.0\.0\.2.* not followed"
                    ) as failed:
                        await client.post(
                            url + "/callback",
                            b"event",
                            content_type="text/plain",
                            secret=_SECRET,
                            event_id="e",
                        )
                    assert failed.value.status == 307 and failed.value.permanent
                    assert not isinstance(failed.value, Unreachable)
                    assert await client.reachable(url + "/callback")  # it answered: alive
        # the same client reaches the bystander directly, so the listener does record connections
        async with DeliveryClient() as client:
            await client.post(elsewhere + "/direct", b"hello", content_type="text/plain")
    assert len(seen) == 1 and b"/direct" in seen[0]


async def test_nothing_listening_is_unreachable() -> None:
    async with DeliveryClient() as client:
        url = f"http://127.0.0.1:{free_port()}/callback"
        with pytest.raises(Unreachable) as failed:
            await client.post(url, b"x", content_type="text/plain", timeout=5)
        assert failed.value.status is None and not failed.value.permanent
        assert not await client.reachable(url)


async def test_a_name_that_now_resolves_outside_the_allowed_networks_is_refused_at_delivery() -> None:
    """DNS rebinding: the check runs when the connection is made, not only at registration."""
    received: list[bytes] = []
    # localhost (127.0.0.1) is not allowed
    async with DeliveryClient(ELSEWHERE) as client, serve_app(receiver(200, received)) as url:
        with pytest.raises(Unreachable, match="refused address"):
            await client.post(url.replace("127.0.0.1", "localhost") + "/callback", b"x", content_type="t/p")
        with pytest.raises(Unreachable, match="outside the allowed networks"):
            await client.post(url + "/callback", b"x", content_type="t/p")  # a literal address
        assert not await client.reachable(url + "/callback")
    assert received == []


async def test_metadata_addresses_are_never_contacted() -> None:
    async with DeliveryClient() as client:
        for url in ("http://169.254.169.254/latest/meta-data", "http://[::ffff:169.254.169.254]/x"):
            with pytest.raises(Unreachable, match="link-local, metadata or reserved"):
                await client.post(url, b"x", content_type="text/plain", timeout=5)


async def test_waiting_for_a_connection_to_a_busy_host_does_not_count_against_the_timeout() -> None:
    """A slow but alive host: each answer takes a quarter of the timeout, but the requests queued
    behind one connection wait longer than the timeout in all. None of them may fail."""
    timeout = 2.0
    in_flight = 0
    most = 0

    async def slow(request: Request) -> Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            await request.body()
            await asyncio.sleep(timeout / 4)  # the puppet's own work, not synchronisation
            return PlainTextResponse("success")
        finally:
            in_flight -= 1

    app = Starlette(routes=[Route("/callback", slow, methods=["POST"])])
    async with DeliveryClient(connections_per_host=1, timeout=timeout) as client, serve_app(app) as url:
        results = await asyncio.gather(
            *(client.post(url + "/callback", b"x", content_type="text/plain") for _ in range(6)),
            return_exceptions=True,
        )
    assert results == [None] * 6
    assert most == 1  # the bound holds: one connection to this host at a time


async def test_the_per_host_queue_keeps_no_entry_for_a_host_nobody_is_waiting_for() -> None:
    """Bounded state: a queue entry lives only while a request holds or awaits a slot, including a
    request cancelled while it waited."""
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def held(request: Request) -> Response:
        await request.body()
        arrived.set()
        await release.wait()
        return PlainTextResponse("success")

    app = Starlette(routes=[Route("/callback", held, methods=["POST"])])
    async with DeliveryClient(connections_per_host=1) as client, serve_app(app) as url:
        first = asyncio.create_task(client.post(url + "/callback", b"1", content_type="text/plain"))
        await arrived.wait()
        queued = asyncio.create_task(client.post(url + "/callback", b"2", content_type="text/plain"))
        await asyncio.sleep(0)  # one turn of the loop: it runs until it waits for the slot
        assert [host.users for host in client._slots._hosts.values()] == [2]  # one holds, one waits
        queued.cancel()
        release.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert len(client._slots) == 0
        by_name = url.replace("127.0.0.1", "localhost")
        await asyncio.gather(
            *(client.post(u + "/callback", b"x", content_type="t/p") for u in (url, by_name))
        )
        assert len(client._slots) == 0
