"""Serving through the manager's WebSocket (``wxkf puppet --transport ws``): for a puppet the manager
cannot reach. One connection carries every account of the process; the contract is docs/compat.md,
"WebSocket transport".

*connecting* → ``/puppetWxkfManager/ws`` (``ws://`` or ``wss://`` of the manager's URL) → per account an
``auth`` frame: its ``webhookSecret`` once it has one, else the registration fields (``corpSecret``,
``token``, ``encodingAESKey``) → ``authed`` (the new ``webhookSecret`` is kept) or ``refused`` (a refused
secret falls back to registering; a refused registration is retried with backoff) → *serving*: each
``delivery`` frame runs through this process's own callback routes, in-process, so it is checked
exactly as a POST would be (the Standard Webhooks signature included), and is answered with an ``ack``
carrying the route's status → the connection is lost → *connecting* again after a jittered
exponential backoff (1 s doubling up to 60 s; back to 1 s after a connection that proved something).

Every proof, the first included, is followed by a pull without a token (:meth:`Account.catch_up
<puppets.account.Account.catch_up>`): callbacks WeCom gave up on while the manager could not be
reached are never coming. An account's start-up pull waits for its first proof, or for the first
failure to connect or to prove it, so that one pull serves as both. :meth:`SocketLink.leave`
deregisters every account on shutdown, once their handlers have finished.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidURI, WebSocketException

from puppets import local_post
from puppets.account import Account
from wxkf.retry import backoff

log = logging.getLogger(__name__)

PATH = "/puppetWxkfManager/ws"
BACKOFF = (1.0, 60.0)
MAX_FRAME = 1024 * 1024  # a delivery frame: the callback's XML or JSON body and its headers
ANSWER_TIMEOUT = 30.0  # for authed/refused/left (a registration lists the corp's accounts)
DELIVERY_PATHS = ("/callback", "/callback/decrypted")


class _connect(connect):
    """websockets' ``connect`` following no redirect (it follows up to 10, to any host, by default): the
    first frames carry the accounts' secrets, which go to the configured manager or nowhere."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


def socket_url(manager: str) -> str:
    """``http(s)://host/...`` of the manager → ``ws(s)://host/.../puppetWxkfManager/ws``."""
    base = manager.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base.removeprefix("https://") + PATH
    return "ws://" + base.removeprefix("http://") + PATH


class SocketLink:
    def __init__(
        self,
        manager: str,
        accounts: Iterable[Account],
        app: ASGIApp,
        *,
        registration_token: str | None = None,
        backoff: tuple[float, float] = BACKOFF,
    ) -> None:
        self.url = socket_url(manager)
        self.accounts = list(accounts)
        self.backoff = backoff
        self._registration_token = registration_token
        self._app = app
        self._ws: ClientConnection | None = None
        self._send_lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.proven: set[str] = set()  # account keys proven on the current connection
        self.connections = 0

    # -- the connection loop ----------------------------------------------------------------
    async def run(self) -> None:
        """Connect, prove, serve; reconnect with backoff when the connection is lost. Until cancelled."""
        failures = 0
        while True:
            try:
                async with _connect(
                    self.url,
                    max_size=MAX_FRAME,
                    open_timeout=10,
                    ping_interval=20,
                    ping_timeout=20,
                    compression=None,  # small frames: deflating each costs CPU on both ends for little
                ) as ws:
                    self.connections += 1
                    log.info("connected to the manager's socket at %s", self.url)
                    await self._session(ws)
                reason = "the manager closed the socket"
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI, WebSocketException) as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            except Exception as exc:  # whatever the other end sent, the link goes on
                log.exception("manager socket: the session failed")
                reason = type(exc).__name__
            for account in self.accounts:  # the start-up pull does not wait for the manager
                account.start_pulling()
            failures = 1 if self.proven else failures + 1
            self.proven.clear()
            delay = backoff(self.backoff, failures)
            log.warning("manager socket lost (%s); reconnecting in %.1f s", reason, delay)
            await asyncio.sleep(delay)

    async def _session(self, ws: ClientConnection) -> None:
        self._ws = ws
        for account in self.accounts:
            self._spawn(self._prove(account))
        try:
            async for message in ws:
                frame = _parse(message)
                if frame is None:
                    log.warning("manager socket: ignored a frame that is not a JSON object")
                elif frame.get("type") == "delivery":
                    self._spawn(self._handle(frame))
                elif (waiting := self._waiting.pop(str(frame.get("id"))[:64], None)) is not None:
                    if not waiting.done():  # its request may have timed out just now
                        waiting.set_result(frame)
                else:
                    log.info("manager socket: unexpected frame %s", str(frame.get("type"))[:32])
        finally:
            self._ws = None
            for task in list(self._tasks):
                task.cancel()
            for waiting in self._waiting.values():
                waiting.cancel()
            self._waiting.clear()

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, frame: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None:
            raise ConnectionError("no connection to the manager")
        async with self._send_lock:
            await ws.send(json.dumps(frame, separators=(",", ":")))

    async def _request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a frame with a new id; the manager's answer with that id."""
        frame_id = str(next(self._ids))
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[frame_id] = answer
        try:
            await self._send({**frame, "id": frame_id})
            async with asyncio.timeout(ANSWER_TIMEOUT):
                return await answer
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if answer.cancelled() and task is not None and not task.cancelling():
                raise ConnectionError("the connection to the manager closed") from None
            raise
        finally:
            self._waiting.pop(frame_id, None)

    # -- proofs -----------------------------------------------------------------------------
    def _auth_frame(self, account: Account, *, register: bool) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "type": "auth",
            "corpId": account.corp_id,
            "kfId": account.open_kfid,
            "kfName": account.name,
        }
        if not register:
            return frame | {"webhookSecret": account.webhook_secrets[0]}
        spec = account.spec
        frame |= {
            "corpSecret": spec.corp_secret,
            "token": spec.token,
            "encodingAESKey": spec.encoding_aes_key,
        }
        if self._registration_token:
            frame["registrationToken"] = self._registration_token
        return frame

    async def _prove(self, account: Account) -> None:
        """Until the account is proven on this connection (or the connection ends)."""
        register = not account.webhook_secrets
        failures = 0
        while True:
            answer = await self._request(self._auth_frame(account, register=register))
            if answer.get("type") == "authed":
                secret = answer.get("webhookSecret")
                account.set_webhook_secret(secret if isinstance(secret, str) else None)
                self.proven.add(account.key)
                log.info(
                    "%s: %s over the manager's socket", account.key, "registered" if secret else "resumed"
                )
                account.catch_up()  # callbacks may have been lost while we were not registered
                return
            message = str(answer.get("message", ""))[:200]
            if not register:  # the secret is no longer good (deregistered, re-registered elsewhere)
                log.info("%s: the manager refused our webhookSecret (%s); registering", account.key, message)
                register = True
                continue
            failures += 1
            account.start_pulling()
            delay = backoff(self.backoff, failures)
            log.warning(
                "%s: registration over the socket refused (%s); next try in %.0f s",
                account.key,
                message,
                delay,
            )
            await asyncio.sleep(delay)

    # -- deliveries -------------------------------------------------------------------------
    async def _handle(self, frame: dict[str, Any]) -> None:
        """Run one delivery through the callback routes; ack with their status."""
        path, query, headers, body = (frame.get(name) for name in ("path", "query", "headers", "body"))
        if (
            path not in DELIVERY_PATHS
            or not isinstance(query, str)
            or not isinstance(body, str)
            or not isinstance(headers, dict)
            or not all(isinstance(value, str) for value in headers.values())
        ):
            status, text = 400, "malformed delivery frame"
        else:
            status, text = await local_post.post(self._app, path, query, headers, body.encode())
        ack: dict[str, Any] = {"type": "ack", "id": frame.get("id"), "account": frame.get("account")}
        ack["status"] = status
        if not 200 <= status < 300:
            ack["message"] = text[:200]
        try:
            await self._send(ack)
        except (ConnectionError, WebSocketException) as exc:
            log.info("manager socket: ack not sent (%s); the manager delivers again", exc)

    # -- shutdown ---------------------------------------------------------------------------
    async def leave(self, timeout: float = 5.0) -> None:
        """Deregister every proven account (the manager keeps their events meanwhile)."""
        if self._ws is None or not self.proven:
            return

        async def leave_one(key: str) -> None:
            try:
                async with asyncio.timeout(timeout):
                    answer = await self._request({"type": "leave", "account": key})
            except (TimeoutError, ConnectionError, WebSocketException) as exc:
                log.warning("%s: deregistration over the socket failed: %s", key, type(exc).__name__)
                return
            if answer.get("type") == "left":
                self.proven.discard(key)
                log.info("%s: deregistered", key)

        await asyncio.gather(*(leave_one(key) for key in sorted(self.proven)))


def _parse(message: str | bytes) -> dict[str, Any] | None:
    try:
        frame = json.loads(message)
    except (ValueError, RecursionError):  # not JSON (or not UTF-8), or nested too deep to decode
        return None
    return frame if isinstance(frame, dict) else None
