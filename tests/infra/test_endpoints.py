"""Endpoint rules at registration: what may be a delivery target, and nothing but EndpointError for
anything else, whatever the string."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from wxkf.endpoints import EndpointError, IPAddress, check_url_shape, validate_endpoint

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


async def to_loopback(host: str, port: int) -> Iterable[IPAddress]:
    """A resolver for the fuzz: every name is 127.0.0.1 (no DNS traffic from random names)."""
    return [ipaddress.ip_address("127.0.0.1")]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8080/hook?x=1", "query or a fragment"),
        ("http://127.0.0.1:8080/hook?", "query or a fragment"),
        ("http://127.0.0.1:8080/hook#top", "query or a fragment"),
        ("http://[::1/x", "malformed"),
        ("http://[::1]]/x", "DNS name or an IP address"),
        ("http://[127.0.0.1]/x", "malformed"),
        ("http://a.example:80:80/", "malformed"),
        ("http://" + "a" * 64 + ".example/x", "not a valid DNS name"),
        ("http://" + ".".join(["a" * 60] * 5) + "/", "253"),
        ("http://exa mple.com/", "printable ASCII"),
        ("http://例子.测试/", "printable ASCII"),
        ("http://host\x00.example/", "printable ASCII"),
        ("http://ho$t.example/", "DNS name or an IP address"),
        ("http://xn--/", "not a valid DNS name"),
        ("http://127.0.0.1:99999/", "malformed"),
        ("http://127.0.0.1:0/", "invalid port"),
        ("http://user:pw@127.0.0.1/", "credentials"),
        ("http://127.0.0.1/a b", "printable ASCII"),
        ("http://127.0.0.1/a\\b", "percent-encoded"),
        ("ftp://127.0.0.1/", "http:// or https://"),
        ("http:///path", "no host"),
        ("http://169.254.169.254/latest", "metadata"),
        ("http://10.1.2.3/hook", "outside the allowed networks"),
        ("http://[fe80::1%25eth0]/", "DNS name or an IP address"),
    ],
)
async def test_a_bad_endpoint_is_refused_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(EndpointError, match=reason):
        await validate_endpoint(url, LOOPBACK)


async def test_a_good_endpoint_comes_back_without_its_trailing_slash() -> None:
    assert await validate_endpoint("http://127.0.0.1:8080/puppets/a/", LOOPBACK) == (
        "http://127.0.0.1:8080/puppets/a"
    )
    assert await validate_endpoint("https://[::1]:8443/", ()) == "https://[::1]:8443"
    assert await validate_endpoint("http://localhost:9/p%20q", LOOPBACK) == "http://localhost:9/p%20q"
    assert await validate_endpoint("HTTP://LocalHost:9", LOOPBACK) == "http://LocalHost:9"


async def test_without_an_allow_list_loopback_and_private_addresses_are_allowed() -> None:
    """The documented default (README, docs/architecture.md): puppets live on the hub's host or a
    private network; only link-local, metadata, multicast and reserved addresses are always refused."""
    for url in ("http://127.0.0.1:1/", "http://10.1.2.3/", "http://192.168.0.9/", "http://[fd00::5]/"):
        assert await validate_endpoint(url) == url.rstrip("/")
    for url in ("http://169.254.169.254/", "http://100.100.100.200/", "http://224.0.0.1/", "http://0.0.0.0/"):
        with pytest.raises(EndpointError):
            await validate_endpoint(url)


async def test_a_name_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(EndpointError, match="cannot resolve"):
        await validate_endpoint("http://no-such-host.invalid/")


URL_PARTS = st.sampled_from(
    [
        *("http://", "https://", "ftp://", "//", "[", "]", "::1", "127.0.0.1", ":", "@", "/", "?", "#"),
        *("%", "%2e", ".", "a" * 63, "a" * 64, "xn--", "-", "_", "\x00", " ", "\\", "é", "8080", "99999"),
        *("0", "user:pw"),
    ]
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300), st.lists(URL_PARTS, max_size=12).map("".join)))
def test_any_string_is_a_valid_endpoint_or_an_endpoint_error(url: str) -> None:
    """Item 5: never a ValueError, UnicodeError or anything else a route would turn into a 500. What
    passes is a URL the delivery path can use as it stands (its shape passes again with a suffix)."""
    try:
        valid = asyncio.run(validate_endpoint(url, LOOPBACK, resolver=to_loopback))
    except EndpointError:
        return
    host, port = check_url_shape(valid + "/callback/decrypted")
    assert host and 0 < port < 65536
    assert valid.startswith(("http://", "https://")) and "?" not in valid and "#" not in valid
    parsed = URL(valid + "/callback", encoded=True)  # as the delivery path reads it
    assert ((parsed.host or "").lower(), parsed.port) == (host.strip("[]").lower(), port)
    assert parsed.raw_path.endswith("/callback")
