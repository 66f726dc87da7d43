"""Outbound delivery to servers someone else runs: one path to sign, POST and classify the answer.

Every delivery the hub makes goes through :class:`DeliveryClient`: the manager's dispatch to puppets
(and its probes), the gateway's forward to ``MANAGER_ENDPOINT`` and its subscription deliveries. The
verdict is a return (any 2xx) or one error tree::

    DeliveryError          .status (int | None), .permanent (bool)
     └── Unreachable       no HTTP answer: refused, reset, timed out, an address the rules refuse

A non-2xx answer raises :class:`DeliveryError` with its status; 3xx and 4xx are permanent (retrying
the same request gets the same answer) except 408, 425 and 429, which, like 5xx and every
:class:`Unreachable`, are transient.

**Redirects are never followed.** The target was checked, the address a ``Location`` names was not:
following a 307 would send the event and its signature wherever the receiver points. A 3xx is a
permanent failure whose message carries the ``Location``.

**Addresses are checked where the socket goes.** Endpoints are checked when they are registered
(:func:`wxkf.endpoints.validate_endpoint`), but a name may later resolve somewhere else (DNS
rebinding: registered as a public name, then pointed at ``169.254.169.254``). The connector resolves
through :class:`_CheckingResolver`, so every new connection is checked against the same rules at the
moment it is made, and literal addresses are checked per request.

**Waiting for a connection is not unreachability.** At most ``connections_per_host`` requests are in
flight per (scheme, host, port); the others wait their turn in :class:`_HostSlots` *before* the
request's timeout starts, so the timeout measures connect + request + answer, never the queue. One
puppet process serving many accounts gets as many concurrent deliveries as it has accounts
delivering, up to that bound.

**Why aiohttp, not httpx.** A puppet delivery is the hub's hottest outbound request, one per
callback. httpx's request building, pool and cancel shields cost several times aiohttp's per request
(docs/benchmarks.md), and aiohttp's pool is keyed by host, so one session serves a whole fleet.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import TracebackType

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from wxkf import webhooks
from wxkf.endpoints import EndpointError, IPNetwork, check_address

DEFAULT_CONNECTIONS_PER_HOST = 256
TRANSIENT_CLIENT_ERRORS = frozenset({408, 425, 429})
_READ_LIMIT = 4096


class DeliveryError(Exception):
    """The receiver did not acknowledge; the message says how. ``status`` is the HTTP status of its
    answer (None: no answer); ``permanent`` says that sending the same request again is pointless."""

    def __init__(
        self, message: str, *, status: int | None = None, permanent: bool = False, answer: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.permanent = permanent
        self.answer = answer  # the first bytes of the answer's body, decoded


class Unreachable(DeliveryError):
    """No HTTP answer at all (refused, reset, timed out, or an address the rules refuse): transient."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=None, permanent=False)


def is_permanent(status: int) -> bool:
    """Would this non-2xx status be the answer again? 3xx and 4xx but 408, 425 and 429."""
    return 300 <= status < 500 and status not in TRANSIENT_CLIENT_ERRORS


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


@dataclass(slots=True)
class _Host:
    slots: asyncio.Semaphore
    users: int = 0


class _HostSlots:
    """At most ``limit`` requests in flight per host key; the rest wait here, in arrival order.

    An entry exists only while someone holds or waits for one of its slots, so the map is bounded by
    the requests in flight, not by every host ever contacted."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._hosts: dict[tuple[str, str, int | None], _Host] = {}

    async def acquire(self, key: tuple[str, str, int | None]) -> _Host:
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = _Host(asyncio.Semaphore(self._limit))
        host.users += 1
        try:
            await host.slots.acquire()
        except BaseException:
            self._forget(key, host)
            raise
        return host

    def release(self, key: tuple[str, str, int | None], host: _Host) -> None:
        host.slots.release()
        self._forget(key, host)

    def _forget(self, key: tuple[str, str, int | None], host: _Host) -> None:
        host.users -= 1
        if host.users == 0 and self._hosts.get(key) is host:
            del self._hosts[key]

    def __len__(self) -> int:
        return len(self._hosts)


class DeliveryClient:
    """POSTs to endpoints someone else runs, under the endpoint rules; one aiohttp session, opened on
    first use (it needs a running loop) and closed by :meth:`aclose`.

    ``allowed`` is the allow-list (``WXKF_ALLOWED_NETWORKS``; empty: any address but the always
    refused ones), ``timeout`` the default seconds for connect + request + answer."""

    def __init__(
        self,
        allowed: Sequence[IPNetwork] = (),
        *,
        connections_per_host: int = DEFAULT_CONNECTIONS_PER_HOST,
        timeout: float = 10.0,
    ) -> None:
        if connections_per_host < 1:
            raise ValueError("connections_per_host must be at least 1")
        self._allowed = tuple(allowed)
        self._timeout = timeout
        self._slots = _HostSlots(connections_per_host)
        self._session: aiohttp.ClientSession | None = None
        self._literal_refusal = lru_cache(maxsize=4096)(self._check_literal)

    async def __aenter__(self) -> DeliveryClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(
        self,
        url: str,
        body: bytes,
        *,
        content_type: str,
        event_id: str | None = None,
        secret: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> None:
        """POST ``body``; return on a 2xx, raise :class:`Unreachable` or :class:`DeliveryError` otherwise.

        ``event_id`` goes out as ``webhook-id``; with ``secret`` (a ``whsec_`` key) the request is also
        signed per Standard Webhooks (``webhook-timestamp``, ``webhook-signature``)."""
        sent = {"content-type": content_type}
        if secret is not None:
            if event_id is None:
                raise ValueError("a signed delivery needs its event id")
            sent |= webhooks.headers(secret, event_id, body)
        elif event_id is not None:
            sent["webhook-id"] = event_id
        if headers:
            sent |= headers
        status, answer, location = await self._request("POST", url, body, sent, timeout)
        if 200 <= status < 300:
            return
        if 300 <= status < 400:
            raise DeliveryError(
                f"HTTP {status}: redirect to {location[:200]!r} not followed (redirects never are)",
                status=status,
                permanent=True,
            )
        snippet = answer[:200].decode(errors="replace")
        raise DeliveryError(
            f"HTTP {status}: {snippet!r}", status=status, permanent=is_permanent(status), answer=snippet
        )

    async def reachable(self, url: str, timeout: float = 3.0) -> bool:
        """Does anything answer HTTP at ``url``? (Any status counts as alive; redirects are not followed.)"""
        return await self.get(url, timeout) is not None

    async def get(self, url: str, timeout: float = 3.0) -> tuple[int, str] | None:
        """``(status, first bytes of the body)`` of a GET of ``url``; None if nothing answered HTTP
        (redirects are not followed)."""
        try:
            status, answer, _ = await self._request("GET", url, None, {}, timeout)
        except DeliveryError:
            return None
        return status, answer[:200].decode(errors="replace")

    # -- one request ----------------------------------------------------------------------------
    async def _request(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float | None
    ) -> tuple[int, bytes, str]:
        """``(status, first bytes of the answer, Location)`` of one request, redirects not followed."""
        target = self._target(url)
        key = (target.scheme, target.host or "", target.port)
        seconds = self._timeout if timeout is None else timeout
        host = await self._slots.acquire(key)  # the queue: before the timeout starts
        try:
            async with self._open().request(
                method,
                target,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=seconds),
            ) as response:
                try:
                    answer = await response.content.read(_READ_LIMIT)
                except aiohttp.ClientPayloadError:
                    answer = b""  # the status line is the verdict
                return response.status, answer, response.headers.get("location", "")
        except TimeoutError:
            raise Unreachable(f"no answer within {seconds:g} s") from None
        except aiohttp.ClientConnectionError as exc:
            raise Unreachable(_describe(exc)) from None
        except ValueError as exc:  # aiohttp.InvalidURL among them: the same request fails again
            raise DeliveryError(f"invalid request: {_describe(exc)}", permanent=True) from None
        except aiohttp.ClientError as exc:
            raise DeliveryError(_describe(exc)) from None
        finally:
            self._slots.release(key, host)

    def _target(self, url: str) -> URL:
        try:
            target = URL(url, encoded=True)
        except (TypeError, ValueError) as exc:
            raise DeliveryError(f"invalid URL: {_describe(exc)}", permanent=True) from None
        refusal = self._literal_refusal(target.host or "")
        if refusal is not None:
            raise Unreachable(f"refused address: {refusal}")
        return target

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

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=0,  # the bound is _HostSlots': aiohttp's own queue would count against the timeout
                limit_per_host=0,
                resolver=_CheckingResolver(self._allowed),
                ttl_dns_cache=30,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
                headers={"user-agent": "wxkf-hub"},
            )
        return self._session


def _describe(exc: BaseException) -> str:
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
