"""The rules for URLs the hub POSTs to on someone's behalf (puppet endpoints, subscriptions).

Without them, registering ``http://169.254.169.254/...`` would turn the hub into a proxy into the
cloud metadata service. The rules, checked at registration (:func:`validate_endpoint`) and again
for every connection a delivery makes (:mod:`wxkf.delivery`):

* only ``http`` and ``https``; no credentials, query or fragment (the hub appends ``/callback`` and
  the like to the path, a query would be silently moved or mangled), a path of RFC 3986 characters;
* the host is an IP literal or a DNS name of LDH labels (letters, digits, ``-``, ``_``) of at most 63
  characters, 253 in all; internationalised names are accepted in their IDNA form;
* link-local, cloud metadata, multicast, unspecified and reserved addresses are always refused;
* with an allow-list (``WXKF_ALLOWED_NETWORKS``) every address a host resolves to must lie in it.
  Without one, loopback and private addresses are allowed: puppets are the operator's own processes
  and live exactly there (the same host under ``wxkf up``, a private network in production). A hub
  that serves corps whose secret holders it does not trust with its network sets the allow-list.

Every refusal is an :class:`EndpointError` whose message says why; no other exception escapes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from urllib.parse import urlsplit

from yarl import URL

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Iterable[IPAddress]]]

MAX_URL = 2048
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
_LABEL = re.compile(r"^[a-z0-9_-]{1,63}$")
_NETLOC = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::[0-9]{1,5})?$")
_PATH = re.compile(r"^(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*$")


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
        raise EndpointError(f"address {address} is outside the allowed networks (WXKF_ALLOWED_NETWORKS)")


def literal_address(host: str) -> IPAddress | None:
    """The address if ``host`` is an IP literal (brackets allowed), else None (a name)."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise EndpointError("endpoint host must not carry an IPv6 zone id")
    return address


def check_host_name(host: str) -> str:
    """The ASCII (IDNA) form of a DNS name, refused unless every label is 1..63 LDH characters."""
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise EndpointError("endpoint host is not a valid DNS name (a label is empty or too long)") from None
    name = ascii_host.removesuffix(".")
    if not name or len(name) > 253:
        raise EndpointError("endpoint host name must be 1..253 characters")
    if not all(_LABEL.match(label) for label in name.split(".")):
        raise EndpointError("endpoint host name labels must be 1..63 letters, digits, '-' or '_'")
    return ascii_host


def check_url_shape(url: str) -> tuple[str, int]:
    """Everything but DNS: scheme, host, port, path; returns ``(host, port)``, the host in ASCII form."""
    if len(url) > MAX_URL:
        raise EndpointError(f"endpoint URL longer than {MAX_URL} characters")
    if "?" in url or "#" in url:
        raise EndpointError("endpoint URL must not have a query or a fragment")
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        raise EndpointError("endpoint URL must be printable ASCII without spaces (IDNA for names)")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        port = parts.port
    except ValueError as exc:  # e.g. "Invalid IPv6 URL", a port out of range
        raise EndpointError(f"endpoint URL is malformed: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise EndpointError("endpoint must be an http:// or https:// URL")
    if not hostname:
        raise EndpointError("endpoint URL has no host")
    if "@" in parts.netloc:
        raise EndpointError("endpoint URL must not carry credentials")
    if not _NETLOC.match(parts.netloc):
        raise EndpointError("endpoint host must be a DNS name or an IP address, with an optional port")
    if port == 0:
        raise EndpointError("endpoint URL has an invalid port")
    if not _PATH.match(parts.path):
        raise EndpointError("endpoint path must be percent-encoded (RFC 3986)")
    if parts.netloc.startswith("[") or ":" in hostname:
        if not isinstance(literal_address(hostname), ipaddress.IPv6Address):
            raise EndpointError("endpoint URL has an invalid IPv6 address")
    elif literal_address(hostname) is None:
        hostname = check_host_name(hostname)
    port = port or (443 if parts.scheme == "https" else 80)
    _check_delivery_reads_it(url, hostname, port)
    return hostname, port


def _check_delivery_reads_it(url: str, host: str, port: int) -> None:
    """The delivery path parses the URL with yarl: it must see the same host and port (e.g. an
    ``xn--`` label that is not valid punycode fails there)."""
    try:
        parsed = URL(url, encoded=True)
        seen = ((parsed.host or "").lower(), parsed.port)
    except (UnicodeError, ValueError, TypeError):
        seen = ("", None)
    if seen != (host.strip("[]").lower(), port):
        raise EndpointError("endpoint host is not a valid DNS name or IP address")


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal is its own address)."""
    address = literal_address(host)
    if address is not None:
        return [address]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise EndpointError(f"cannot resolve {host!r}: {reason}") from None
    return [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos]


async def validate_endpoint(
    url: str, allowed: Sequence[IPNetwork] = (), *, resolver: Resolver = resolve
) -> str:
    """The URL without a trailing slash, if it passes the rules above for every address it resolves to;
    else :class:`EndpointError`."""
    host, port = check_url_shape(url)
    addresses = list(await resolver(host, port))
    if not addresses:
        raise EndpointError(f"{host!r} resolves to no address")
    for address in addresses:
        check_address(address, allowed)
    scheme, rest = url.split(":", 1)
    return scheme.lower() + ":" + rest.rstrip("/")
