"""A puppet host for many kf accounts that records every delivery and flags two at once for one account.

It serves the compat puppet routes under ``/{kfId}`` (``POST /{kfId}/callback`` with the original
encrypted XML, ``POST /{kfId}/callback/decrypted`` with ``{token, openKfId}``), decrypts each delivery
to learn its callback ``Token``, and holds it open for ``hold`` seconds before answering ``success``,
which widens the window in which a second delivery for the same account would overlap. Each delivery
records which process sent it (:mod:`tests.support.socket_owner`), so a test can say not only that
two deliveries overlapped but which managers made them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tests.support.socket_owner import sender_of
from tests.support.wecom_callbacks import CorpAppKeys
from wecom.models import KfMsgOrEvent, parse_event
from wecom.xml import parse_xml

UNKNOWN = "?"


@dataclass(repr=False)
class Delivery:
    account: str
    token: str
    sender: str  # the sending process's name, or UNKNOWN
    started: float  # time.monotonic() of this (the test's) process
    ended: float | None = None

    def describe(self, origin: float = 0.0) -> str:
        end = f"{self.ended - origin:.2f}" if self.ended is not None else "open"
        return f"{self.account} {self.token} from {self.sender} [{self.started - origin:.2f}, {end}]"

    __repr__ = describe


@dataclass(repr=False)
class RecordingPuppet:
    keys: CorpAppKeys
    senders: Callable[[], Mapping[int, str]]  # pid -> name of every process that may deliver
    hold: float = 0.4
    deliveries: list[Delivery] = field(default_factory=list)
    overlaps: list[tuple[Delivery, Delivery]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # deliveries it could not read
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    origin: float = field(default_factory=time.monotonic)
    _open: dict[str, list[Delivery]] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<RecordingPuppet: {len(self.deliveries)} deliveries, {len(self.overlaps)} overlaps>"

    # -- what arrived -----------------------------------------------------------------------
    def tokens(self, account: str) -> set[str]:
        """Tokens of every delivery for ``account`` that reached the puppet (answered or not yet)."""
        return {d.token for d in self.deliveries if d.account == account}

    def answered(self, account: str) -> set[str]:
        """Tokens of the deliveries for ``account`` the puppet has answered."""
        return {d.token for d in self.deliveries if d.account == account and d.ended is not None}

    def by(self, sender: str, *, since: float = float("-inf")) -> list[Delivery]:
        return [d for d in self.deliveries if d.sender == sender and d.started >= since]

    def in_flight(self, sender: str) -> list[Delivery]:
        """``sender``'s deliveries that are open right now."""
        return [d for open_ in self._open.values() for d in open_ if d.sender == sender]

    def report(self) -> str:
        """Every overlap and refusal, readable in a failed assertion."""
        lines = [f"{len(self.overlaps)} overlapping deliveries:"]
        lines += [f"  {a.describe(self.origin)}  and  {b.describe(self.origin)}" for a, b in self.overlaps]
        lines += [f"unreadable delivery: {reason}" for reason in self.refused]
        return "\n".join(lines)

    def assert_never_two_at_once(self) -> None:
        """Fail, listing them, if two deliveries for one account ever overlapped."""
        if self.overlaps or self.refused:
            raise AssertionError(self.report())

    async def wait(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        """Wait until ``predicate()`` holds (checked on every delivery's start and end)."""
        try:
            async with asyncio.timeout(timeout), self.changed:
                await self.changed.wait_for(predicate)
        except TimeoutError:
            raise AssertionError(f"not within {timeout} s: {what}\n{self.report()}") from None

    # -- the HTTP side ----------------------------------------------------------------------
    def _sender(self, request: Request) -> str:
        client, server = request.scope.get("client"), request.scope.get("server")
        if not client or not server:
            return UNKNOWN
        names = self.senders()
        pid = sender_of(client[1], server[1], list(names))
        return names.get(pid, UNKNOWN) if pid is not None else UNKNOWN

    def _read(self, request: Request, body: bytes) -> tuple[str, str]:
        """``(openKfId, Token)`` of a delivery; raises ValueError/KeyError if it is not one."""
        if request.url.path.endswith("/decrypted"):
            data = json.loads(body)
            return str(data["openKfId"]), str(data["token"])
        q = request.query_params
        envelope = parse_xml(body)
        plain = self.keys.crypt.open(q["msg_signature"], q["timestamp"], q["nonce"], envelope["Encrypt"])
        event = parse_event(plain)
        if not isinstance(event, KfMsgOrEvent):
            raise ValueError("not a kf_msg_or_event")
        return event.open_kf_id, event.token

    async def handle(self, request: Request) -> Response:
        sender = self._sender(request)  # first: the connection is surely open now
        body = await request.body()
        try:
            account, token = self._read(request, body)
        except (KeyError, ValueError) as exc:
            self.refused.append(f"{request.url.path} from {sender}: {exc!r}")
            return PlainTextResponse("bad request", status_code=400)
        if account != request.path_params["kf"]:
            self.refused.append(f"{request.url.path} from {sender}: delivery for {account}")
        await self.hold_open(account, token, sender)
        return PlainTextResponse("success")

    async def hold_open(self, account: str, token: str, sender: str) -> None:
        """Record one delivery, flag any other open for the account, and keep it open ``hold`` s."""
        delivery = Delivery(account, token, sender, time.monotonic())
        async with self.changed:
            for other in self._open.get(account, []):
                self.overlaps.append((other, delivery))
            self._open.setdefault(account, []).append(delivery)
            self.deliveries.append(delivery)
            self.changed.notify_all()
        try:
            await asyncio.sleep(self.hold)  # a slow puppet: the delivery stays open meanwhile
        finally:
            async with self.changed:
                delivery.ended = time.monotonic()
                self._open[account].remove(delivery)
                self.changed.notify_all()

    def app(self) -> Starlette:
        async def probe(request: Request) -> Response:  # a bare GET /callback, as a Node puppet answers
            return PlainTextResponse("bad request", status_code=400)

        return Starlette(
            routes=[
                Route("/{kf}/callback", probe, methods=["GET"]),
                Route("/{kf}/callback", self.handle, methods=["POST"]),
                Route("/{kf}/callback/decrypted", self.handle, methods=["POST"]),
            ]
        )
