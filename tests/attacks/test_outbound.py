"""Attacks on where the hub's outbound deliveries go (puppet endpoints, subscriptions).

Metadata and link-local addresses are refused in every spelling: at registration
(:func:`wxkf.endpoints.validate_endpoint`) and again at delivery time (:class:`wxkf.delivery.DeliveryClient`),
with or without an allow-list.
"""

from __future__ import annotations

import pytest

from wxkf.delivery import DeliveryClient, Unreachable
from wxkf.endpoints import EndpointError, validate_endpoint

METADATA_IN_DISGUISE = [
    "http://[::ffff:169.254.169.254]/",  # IPv4-mapped
    "http://[::a9fe:a9fe]/",  # IPv4-compatible (deprecated, still unwrapped by some stacks)
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64, the well-known prefix: the NAT64 gateway connects there
    "http://[64:ff9b:1::a9fe:a9fe]/",  # NAT64, a local-use prefix
    "http://[2002:a9fe:a9fe::1]/",  # 6to4: the relay connects to 169.254.169.254
    "http://2852039166/",  # decimal
    "http://0251.0376.0251.0376/",  # octal
    "http://0xa9fea9fe/",  # hex
    "http://192.0.0.192/",  # Oracle Cloud's metadata service
]


@pytest.mark.parametrize("url", METADATA_IN_DISGUISE)
async def test_a_metadata_address_in_any_spelling_is_refused_at_registration(url: str) -> None:
    with pytest.raises(EndpointError, match="link-local, metadata or reserved"):
        await validate_endpoint(url)


@pytest.mark.parametrize("url", [u for u in METADATA_IN_DISGUISE if "[" in u or "192.0.0" in u])
async def test_a_metadata_literal_in_any_spelling_is_refused_at_delivery(url: str) -> None:
    # an endpoint stored before the rules tightened is checked again on every delivery
    async with DeliveryClient() as deliveries:
        with pytest.raises(Unreachable, match="refused address"):
            await deliveries.post(url + "callback", b"{}", content_type="application/json")


async def test_loopback_stays_allowed_without_an_allow_list() -> None:
    # the documented default: puppets run next to the hub (wxkf up) or on a private network
    assert await validate_endpoint("http://[::1]:8080/puppet") == "http://[::1]:8080/puppet"
    assert await validate_endpoint("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
