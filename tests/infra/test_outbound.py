"""Puppet deliveries: a verdict per request, and the endpoint rules enforced where the socket goes."""

from __future__ import annotations

import ipaddress

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.support.servers import serve_app
from tests.support.services import free_port
from wxkf.delivery import DeliveryError
from wxkf.outbound import Outbound, Unreachable

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
ELSEWHERE = (ipaddress.ip_network("10.0.0.0/8"),)


def receiver(status: int, received: list[bytes]) -> Starlette:
    async def callback(request: Request) -> PlainTextResponse:
        received.append(await request.body())
        return PlainTextResponse("success" if status < 300 else "nope", status_code=status)

    return Starlette(routes=[Route("/callback", callback, methods=["GET", "POST"])])


async def test_a_2xx_is_delivered_by_host_name_and_anything_else_says_why() -> None:
    received: list[bytes] = []
    outbound = Outbound(LOOPBACK)
    try:
        async with serve_app(receiver(200, received)) as url:
            by_name = url.replace("127.0.0.1", "localhost") + "/callback"
            await outbound.post(by_name, b"<xml/>", {"content-type": "application/xml"}, timeout=5)
            assert received == [b"<xml/>"]
            assert await outbound.reachable(by_name)
        async with serve_app(receiver(503, received)) as url:
            with pytest.raises(DeliveryError, match="HTTP 503") as failed:
                await outbound.post(url + "/callback", b"x", {}, timeout=5)
            assert not isinstance(failed.value, Unreachable)  # it answered: back off, do not park
    finally:
        await outbound.aclose()


async def test_nothing_listening_is_unreachable() -> None:
    outbound = Outbound()
    try:
        url = f"http://127.0.0.1:{free_port()}/callback"
        with pytest.raises(Unreachable):
            await outbound.post(url, b"x", {}, timeout=5)
        assert not await outbound.reachable(url)
    finally:
        await outbound.aclose()


async def test_a_name_that_now_resolves_outside_the_allowed_networks_is_refused_at_delivery() -> None:
    """DNS rebinding: the check runs when the connection is made, not only at registration."""
    received: list[bytes] = []
    outbound = Outbound(ELSEWHERE)  # localhost (127.0.0.1) is not allowed
    try:
        async with serve_app(receiver(200, received)) as url:
            with pytest.raises(Unreachable, match="refused address"):
                await outbound.post(url.replace("127.0.0.1", "localhost") + "/callback", b"x", {}, timeout=5)
            with pytest.raises(Unreachable, match="outside the allowed networks"):
                await outbound.post(url + "/callback", b"x", {}, timeout=5)  # a literal address
        assert received == []
    finally:
        await outbound.aclose()


async def test_metadata_addresses_are_never_contacted() -> None:
    outbound = Outbound()
    try:
        with pytest.raises(Unreachable, match="link-local, metadata or reserved"):
            await outbound.post("http://169.254.169.254/latest/meta-data", b"x", {}, timeout=5)
        with pytest.raises(Unreachable, match="link-local, metadata or reserved"):
            await outbound.post("http://[::ffff:169.254.169.254]/x", b"x", {}, timeout=5)
    finally:
        await outbound.aclose()
