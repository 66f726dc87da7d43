"""Validation of URLs we will POST to on someone's behalf (puppet endpoints, subscriptions).

Without it, registering ``http://169.254.169.254/...`` would turn the hub into a proxy into the
cloud metadata service. Only http(s) is allowed; link-local, metadata, multicast, unspecified and
reserved addresses are always refused; an optional allow-list restricts targets further. Host names are
resolved and every address they resolve to is checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALWAYS_REFUSED: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),  # link-local, incl. AWS/GCP/Azure metadata
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("100.100.100.200/32"),  # Alibaba Cloud metadata
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS IMDS over IPv6
    ipaddress.ip_network("0.0.0.0/8"),
    ipaddress.ip_network("::/128"),
    ipaddress.ip_network("224.0.0.0/4"),
    ipaddress.ip_network("ff00::/8"),
    ipaddress.ip_network("240.0.0.0/4"),
)


class EndpointError(ValueError):
    """The URL may not be used as a delivery target; the message says why."""


def parse_networks(text: str | None) -> tuple[IPNetwork, ...]:
    """``"10.0.0.0/8, 127.0.0.1/32"`` -> networks; empty or None -> no allow-list."""
    if not text:
        return ()
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def check_address(address: IPAddress, allowed: Sequence[IPNetwork]) -> None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    for network in ALWAYS_REFUSED:
        if address.version == network.version and address in network:
            raise EndpointError(f"address {address} is link-local, metadata or reserved")
    if allowed and not any(address.version == n.version and address in n for n in allowed):
        raise EndpointError(f"address {address} is outside the allowed networks")


def check_url_shape(url: str) -> tuple[str, int]:
    """Scheme, host and length checks without DNS; returns ``(host, port)``."""
    if len(url) > 2048:
        raise EndpointError("endpoint URL longer than 2048 characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise EndpointError("endpoint must be an http:// or https:// URL")
    if not parts.hostname:
        raise EndpointError("endpoint URL has no host")
    if parts.username or parts.password:
        raise EndpointError("endpoint URL must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise EndpointError("endpoint URL has an invalid port") from None
    return parts.hostname, port


async def resolve(host: str, port: int) -> Iterable[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise EndpointError(f"cannot resolve {host!r}: {exc.strerror or exc}") from None
    return [ipaddress.ip_address(info[4][0]) for info in infos]


async def validate_endpoint(url: str, allowed: Sequence[IPNetwork] = ()) -> str:
    """Return the URL without a trailing slash if every address it resolves to is acceptable."""
    host, port = check_url_shape(url)
    for address in await resolve(host, port):
        check_address(address, allowed)
    return url.rstrip("/")
