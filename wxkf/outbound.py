"""POSTs to servers someone else runs (puppets): cheap per request, and checked where the socket goes.

**Why aiohttp here, not httpx.** A puppet delivery is the hub's hottest outbound request, one per
callback. Under httpx it was 57 % of the hub's CPU at 200 callbacks/s (py-spy: request building,
httpcore's pool and anyio cancel shields, reading and closing the response); measured in one process
against a local server, aiohttp's client costs a fraction of that per request (docs/benchmarks.md). Its
connector keys pooled connections by host, so one session serves a whole fleet of puppets without
walking every pooled connection per request, which is what made one shared httpx client cost time in
proportion to the fleet.

**Why a resolver of our own.** Endpoints are checked when a puppet registers
(:func:`wxkf.endpoints.validate_endpoint`), but a host name may later resolve somewhere else (DNS
rebinding: registered as a public name, then pointed at ``169.254.169.254``). The connector resolves
through :class:`_CheckingResolver`, so every new connection is checked against the same rules at the
moment it is made, and literal addresses are checked per request.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Sequence
from functools import lru_cache

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from wxkf.delivery import DeliveryError
from wxkf.endpoints import EndpointError, IPNetwork, check_address


class Unreachable(DeliveryError):
    """No HTTP answer at all (refused, reset, timed out, or an address we may not connect to)."""


class _CheckingResolver(AbstractResolver):
    """The default resolver, refusing a host any of whose addresses the endpoint rules refuse."""

    def __init__(self, allowed: Sequence[IPNetwork]) -> None:
        self._allowed = tuple(allowed)
        self._resolver = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        for result in results:
            try:
                check_address(ipaddress.ip_address(result["host"]), self._allowed)
            except EndpointError as exc:
                # errno and strerror: aiohttp keeps only those when it wraps the error
                raise OSError(errno.EACCES, f"{host} resolves to a refused address: {exc}") from None
        return results

    async def close(self) -> None:
        await self._resolver.close()


class Outbound:
    """One aiohttp session for all puppets, created on first use (it needs a running loop)."""

    def __init__(
        self, allowed: Sequence[IPNetwork] = (), *, connections_per_host: int = 8, timeout: float = 10.0
    ) -> None:
        self._allowed = tuple(allowed)
        self._connections_per_host = connections_per_host
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._literal_ok = lru_cache(maxsize=4096)(self._check_literal)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=0,
                limit_per_host=self._connections_per_host,
                resolver=_CheckingResolver(self._allowed),
                ttl_dns_cache=30,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
                headers={"user-agent": "wxkf-hub"},
            )
        return self._session

    def _check_literal(self, host: str) -> str | None:
        """The refusal for a literal-address host (aiohttp does not resolve those), else None."""
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return None  # a name: the resolver checks it
        try:
            check_address(address, self._allowed)
        except EndpointError as exc:
            return str(exc)
        return None

    def _target(self, url: str) -> URL:
        target = URL(url, encoded=True)
        refusal = self._literal_ok(target.host or "")
        if refusal is not None:
            raise Unreachable(f"refused address: {refusal}")
        return target

    async def post(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> None:
        """POST; return on a 2xx, raise :class:`Unreachable` or :class:`DeliveryError` otherwise."""
        try:
            async with self._open().post(
                self._target(url), data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                text = await response.content.read(4096)
                if not 200 <= response.status < 300:
                    snippet = text[:200].decode(errors="replace")
                    raise DeliveryError(f"HTTP {response.status}: {snippet!r}")
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            raise Unreachable(_describe(exc)) from None
        except aiohttp.ClientError as exc:
            raise DeliveryError(_describe(exc)) from None

    async def reachable(self, url: str, timeout: float = 3.0) -> bool:
        """Does anything answer HTTP at ``url``? (Any status counts as alive.)"""
        try:
            async with self._open().get(
                self._target(url), timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                await response.content.read(4096)
        except (Unreachable, TimeoutError, aiohttp.ClientError):
            return False
        return True

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _describe(exc: BaseException) -> str:
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
