"""Deliveries over a puppet's own WebSocket: the live connections, by account, and their frames.

A puppet that cannot be reached connects out to ``/puppetWxkfManager/ws`` (the endpoint and the
proofs are :mod:`manager.socket_routes`) and registers its accounts with the endpoint
:data:`SOCKET_ENDPOINT`. A delivery for such an account is a ``delivery`` frame on the connection
that proved the account, answered by an ``ack`` frame with the same id::

    → {"type": "delivery", "id": "7", "account": "ww…/wk…", "path": "/callback/decrypted",
       "query": "", "headers": {"content-type": …, "webhook-id": …, …}, "body": "{…}"}
    ← {"type": "ack", "id": "7", "account": "ww…/wk…", "status": 200}

The frame carries what the HTTP delivery would (path, query, Standard Webhooks headers, body), so
the puppet checks it exactly as it checks a POST. The verdict is the same as over HTTP
(:mod:`wxkf.delivery`): an ack with a 2xx status delivers; another status is a
:class:`~wxkf.delivery.DeliveryError` with that status; no live connection for the account, the
connection closing before the ack, or no ack within the timeout is :class:`~wxkf.delivery.Unreachable`,
so the dispatcher's offline path (park, flow when seen again) applies unchanged. No connection *here*
is :class:`NoSocketHere`: with several manager replicas the puppet may be connected to another one,
which the puppet registry records (:meth:`~manager.puppets.PuppetRegistry.claim_socket`); the
dispatcher then hands the account's lease to that replica instead of parking it.

Invariants: an account has at most one connection (the newest proof wins; the older connection's
deliveries in flight fail as unreachable); a connection holds at most ``limits.accounts`` accounts and
as many acks pending (the dispatcher has at most one delivery in flight per account).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge
from starlette.websockets import WebSocket, WebSocketState

from wxkf import webhooks
from wxkf.delivery import DeliveryError, Unreachable, is_permanent

log = logging.getLogger(__name__)

ACCOUNTS = Gauge(
    "wxkf_manager_socket_accounts", "Accounts whose puppet is connected to this process's socket"
)
REFUSALS = Counter(
    "wxkf_manager_socket_refusals_total",
    "Socket proofs refused and connections closed, by reason",
    ["reason"],
)

#: the endpoint a puppet registers to take its deliveries over its WebSocket
SOCKET_ENDPOINT = "ws:"

# close codes (RFC 6455 §7.4.1)
GOING_AWAY = 1001
UNSUPPORTED = 1003
POLICY = 1008
TOO_BIG = 1009
TRY_LATER = 1013


class NoSocketHere(Unreachable):
    """No connection for the account is open to this process (another replica may hold one)."""


@dataclass(frozen=True)
class SocketLimits:
    """What one connection may hold. ``frame_bytes`` bounds a frame from the puppet; a connection that
    has proven no account ``proof_deadline`` seconds after it opened is closed; at most
    ``unproven_connections`` connections may be waiting for their first proof at once; a connection
    whose proofs fail ``failed_proofs`` times is closed."""

    frame_bytes: int = 64 * 1024
    accounts: int = 1000
    proof_deadline: float = 5.0
    unproven_connections: int = 256
    failed_proofs: int = 3


class Connection:
    """One puppet's WebSocket: the accounts proven on it and the deliveries awaiting its ack."""

    def __init__(self, websocket: WebSocket, limits: SocketLimits) -> None:
        self.websocket = websocket
        self.limits = limits
        self.accounts: set[str] = set()
        self.claims: dict[str, str] = {}  # account -> the claim its proof recorded (puppet registry)
        self.failed_proofs = 0
        self.stopping: set[str] = set()  # accounts whose puppet answered "503 stopping" here
        self._pending: dict[str, tuple[str, asyncio.Future[tuple[int, str]]]] = {}
        self._ids = itertools.count(1)
        self._send_lock = asyncio.Lock()
        self.closed = False

    async def send(self, frame: Mapping[str, Any]) -> None:
        """One JSON text frame; raises :class:`Unreachable` once the connection is gone."""
        if self.closed:
            raise Unreachable("the puppet's socket is closed")
        text = json.dumps(frame, separators=(",", ":"))
        try:
            async with self._send_lock:
                await self.websocket.send_text(text)
        except Exception as exc:  # the socket died under us: whatever the server's library raises
            raise Unreachable(f"the puppet's socket failed: {type(exc).__name__}") from None

    async def deliver(self, account: str, frame: dict[str, Any], timeout: float) -> tuple[int, str]:
        """Send ``frame`` as a delivery for ``account``; ``(status, message)`` of its ack."""
        if len(self._pending) >= self.limits.accounts:
            raise Unreachable("too many deliveries awaiting an ack on this socket")
        delivery_id = str(next(self._ids))
        answer: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self._pending[delivery_id] = (account, answer)
        try:
            await self.send({"type": "delivery", "id": delivery_id, "account": account, **frame})
            async with asyncio.timeout(timeout):
                return await answer
        except TimeoutError:
            raise Unreachable(f"no ack within {timeout:g} s") from None
        finally:
            self._pending.pop(delivery_id, None)

    def acked(self, delivery_id: str, account: str, status: int, message: str) -> bool:
        """Resolve a delivery; False if no delivery of ``account`` with that id awaits an ack (a late
        ack after the timeout, or a made-up one)."""
        pending = self._pending.get(delivery_id)
        if pending is None or pending[0] != account or pending[1].done():
            return False
        pending[1].set_result((status, message))
        return True

    def close_pending(self) -> None:
        """The connection is gone: every delivery awaiting its ack fails as unreachable."""
        self.closed = True
        for _, answer in self._pending.values():
            if not answer.done():
                answer.set_exception(Unreachable("the puppet's socket closed before its ack"))

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code`` and a reason (at most 123 bytes, as the protocol allows)."""
        self.close_pending()
        if self.websocket.application_state == WebSocketState.CONNECTED:
            try:
                await self.websocket.close(code, reason.encode()[:123].decode(errors="ignore"))
            except Exception:  # already closing from the other side
                log.debug("closing a puppet socket failed", exc_info=True)


class PuppetSockets:
    """The live puppet connections of this process, by account key."""

    def __init__(self, limits: SocketLimits | None = None) -> None:
        self.limits = limits or SocketLimits()
        self._by_account: dict[str, Connection] = {}
        self.unproven = 0  # connections open but with no account proven yet

    def connected(self, key: str) -> bool:
        """Is a connection open for ``key``, whose puppet is not stopping?"""
        connection = self._by_account.get(key)
        return connection is not None and not connection.closed and key not in connection.stopping

    def stopping(self, key: str) -> None:
        """``key``'s puppet answered that it is stopping: its socket no longer counts as connected for
        it (the probe); a new proof, on any connection, counts again."""
        connection = self._by_account.get(key)
        if connection is not None:
            connection.stopping.add(key)

    def attach(self, key: str, connection: Connection, claim: str) -> None:
        """``connection`` proved ``key`` (recorded durably as ``claim``): it takes the account's
        deliveries from now on (from any connection that proved it before, which may be a dead one of
        the same puppet)."""
        previous = self._by_account.get(key)
        if previous is not None and previous is not connection:
            previous.accounts.discard(key)
        connection.accounts.add(key)
        connection.stopping.discard(key)
        connection.claims[key] = claim
        self._by_account[key] = connection
        ACCOUNTS.set(len(self._by_account))

    def detach(self, key: str, connection: Connection) -> None:
        connection.accounts.discard(key)
        connection.stopping.discard(key)
        if self._by_account.get(key) is connection:
            del self._by_account[key]
            ACCOUNTS.set(len(self._by_account))

    def drop(self, connection: Connection) -> dict[str, str]:
        """The connection closed: its accounts have no socket until they are proven again. Returns the
        claims its proofs recorded (account -> claim), to release."""
        connection.close_pending()
        for key in list(connection.accounts):
            self.detach(key, connection)
        claims, connection.claims = connection.claims, {}
        return claims

    async def close_if_fenced(self, fenced: Callable[[], bool]) -> None:
        """While ``fenced()`` (this replica's lease fence ran out: it could not write a checkpoint, so
        it may be taken over at any moment and must not deliver), close every connection with 1013,
        so that its puppets reconnect and prove their accounts to a replica that can serve them,
        rather than wait on this one until its database comes back."""
        if self._by_account and fenced():
            log.warning(
                "this replica cannot renew its leases (no checkpoint written): closing the sockets of"
                " %d puppet account(s) with 1013 so that they reconnect to another replica",
                len(self._by_account),
            )
            await self.close_all(TRY_LATER, "manager replica cut off from its database; reconnect")

    async def close_all(self, code: int, reason: str) -> None:
        """Close every connection (their puppets reconnect and prove their accounts again)."""
        connections = {id(connection): connection for connection in self._by_account.values()}
        for connection in connections.values():
            await connection.close(code, reason)

    def __len__(self) -> int:
        return len(self._by_account)

    async def deliver(
        self,
        key: str,
        *,
        path: str,
        query: str,
        body: bytes,
        content_type: str,
        event_id: str,
        secret: str,
        timeout: float,
    ) -> None:
        """One delivery to ``key``'s socket, signed as the HTTP one is; returns once acked with a 2xx.

        Raises :class:`Unreachable` (no socket, closed, no ack in time) or :class:`DeliveryError`."""
        connection = self._by_account.get(key)
        if connection is None or connection.closed:
            raise NoSocketHere("no socket is open to this process for this account")
        headers = {"content-type": content_type, **webhooks.headers(secret, event_id, body)}
        frame = {"path": path, "query": query, "headers": headers, "body": body.decode()}
        status, message = await connection.deliver(key, frame, timeout)
        if 200 <= status < 300:
            return
        raise DeliveryError(
            f"socket ack {status}: {message[:200]!r}",
            status=status,
            permanent=is_permanent(status),
            answer=message[:200],
        )
