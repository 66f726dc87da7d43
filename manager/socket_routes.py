"""``/puppetWxkfManager/ws``: the WebSocket a puppet that cannot be reached opens to the manager.

The contract (frames, proofs, limits, close codes) is docs/compat.md, "WebSocket transport". In short:
the puppet proves each account with an ``auth`` frame — ``corpSecret`` + ``token`` +
``encodingAESKey`` registers it as ``/register`` does (with the endpoint
:data:`~manager.sockets.SOCKET_ENDPOINT`; the answer carries the new ``webhookSecret``), a
``webhookSecret`` (or the ``corpSecret`` alone) resumes an account already registered that way — and
is answered ``authed`` or ``refused``. From then on the account's deliveries arrive as ``delivery``
frames (:mod:`manager.sockets`), each answered by an ``ack``; ``leave`` deregisters it. A proof also
counts as a heartbeat: an account that was offline flows at once.

With several manager replicas, the replica that accepts a proof records that it holds the account's
socket (:meth:`~manager.puppets.PuppetRegistry.claim_socket`, before ``authed``; released when the
connection closes, only if no newer proof replaced it) and then serves the account: whatever waits in
its mailbox flows here, and a replica holding the account's lease without the socket hands the lease
over (:mod:`manager.dispatcher`).

Secrets travel only in frames, never in the URL. Anything else a client can do is bounded: the
frame size, the accounts per connection, the failed proofs per connection, the time a connection may
stay open without proving anything and how many may do so at once. A malformed or forged frame
closes the connection with a close code and a reason; nothing reaches the database before a proof.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket

from manager.mailbox import account_key
from manager.puppets import Puppet
from manager.registration import Registration
from manager.service import Manager
from manager.sockets import (
    POLICY,
    REFUSALS,
    SOCKET_ENDPOINT,
    TOO_BIG,
    TRY_LATER,
    UNSUPPORTED,
    Connection,
    PuppetSockets,
)
from wxkf.http import Refusal
from wxkf.logging import warn_limited

log = logging.getLogger(__name__)

PATH = "/puppetWxkfManager/ws"
FRAME_ID = r"^[A-Za-z0-9_.:-]{1,64}$"
CONCURRENT_PROOFS = 16  # checked at once per connection; the others wait their turn


class AuthFrame(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["auth"]
    id: str = Field(pattern=FRAME_ID)
    corpId: str = Field(min_length=1, max_length=64)
    kfId: str = Field(min_length=1, max_length=128)
    kfName: str = Field(default="", max_length=128)
    webhookSecret: str | None = Field(default=None, max_length=256)
    corpSecret: str | None = Field(default=None, max_length=256)
    token: str | None = Field(default=None, max_length=128)
    encodingAESKey: str | None = Field(default=None, min_length=43, max_length=43)
    registrationToken: str | None = Field(default=None, max_length=256)


class AckFrame(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["ack"]
    id: str = Field(pattern=FRAME_ID)
    account: str = Field(min_length=1, max_length=200)
    status: int = Field(ge=100, le=599)
    message: str = Field(default="", max_length=1024)


class LeaveFrame(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["leave"]
    id: str = Field(pattern=FRAME_ID)
    account: str = Field(min_length=1, max_length=200)


FRAMES: TypeAdapter[AuthFrame | AckFrame | LeaveFrame] = TypeAdapter(
    Annotated[AuthFrame | AckFrame | LeaveFrame, Field(discriminator="type")]
)


class ProofRefused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


async def prove(manager: Manager, frame: AuthFrame, caller: str | None) -> tuple[Puppet, str | None]:
    """The account's puppet, and its new webhook secret when this proof registered it. ``caller``
    (the client address) pays for proving a corpSecret the token service has not seen work."""
    registrar = manager.registration
    if frame.corpSecret and frame.token and frame.encodingAESKey:
        if not registrar.registration_token_ok(frame.registrationToken):
            raise ProofRefused("registration_token", "registrationToken missing or wrong")
        registration = Registration(
            corp_id=frame.corpId,
            corp_secret=frame.corpSecret,
            kf_id=frame.kfId,
            kf_name=frame.kfName,
            endpoint=SOCKET_ENDPOINT,
            token=frame.token,
            encoding_aes_key=frame.encodingAESKey,
            caller=caller,
        )
        try:
            puppet, secret = await registrar.register(registration)
        except Refusal as exc:
            raise ProofRefused("registration_refused", exc.message) from None
        if puppet.open_kfid != frame.kfId:
            raise ProofRefused("registration_refused", "kfId must be the account's open_kfid")
        return puppet, secret
    presented = frame.webhookSecret or frame.corpSecret
    if not presented:
        raise ProofRefused("no_proof", "give webhookSecret, or corpSecret with token and encodingAESKey")
    known = await registrar.authenticate(frame.corpId, frame.kfId, presented)
    if known is None or not known.registered:
        raise ProofRefused("proof_refused", "unknown account or wrong secret; register with corpSecret")
    if known.endpoint != SOCKET_ENDPOINT:
        raise ProofRefused("not_a_socket_puppet", "the account is registered for HTTP delivery")
    return known, None


class _Session:
    """One connection's frames, read in order; proofs run beside the reading (they may call WeCom)."""

    def __init__(self, manager: Manager, sockets: PuppetSockets, connection: Connection) -> None:
        self.manager = manager
        self.sockets = sockets
        self.connection = connection
        client = connection.websocket.client
        self.caller = client.host if client is not None else None
        self.limits = sockets.limits
        self.counted_unproven = True
        self._proofs: set[asyncio.Task[None]] = set()
        self._proof_slots = asyncio.Semaphore(CONCURRENT_PROOFS)

    def _proven(self) -> None:
        if self.counted_unproven:
            self.counted_unproven = False
            self.sockets.unproven -= 1

    async def refuse(self, code: int, reason: str, label: str) -> None:
        REFUSALS.labels(label).inc()
        warn_limited(log, label, "puppet socket closed: %s", reason)
        await self.connection.close(code, reason)

    async def run(self) -> None:
        websocket = self.connection.websocket
        watchdog = asyncio.create_task(self._close_if_unproven())
        try:
            while not self.connection.closed:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:
                    await self.refuse(UNSUPPORTED, "binary frames are not part of the protocol", "binary")
                    return
                if len(text) > self.limits.frame_bytes or len(text.encode()) > self.limits.frame_bytes:
                    await self.refuse(TOO_BIG, f"frame exceeds {self.limits.frame_bytes} bytes", "too_big")
                    return
                try:
                    frame = FRAMES.validate_json(text)
                except ValidationError as exc:
                    first = exc.errors()[0]
                    where = ".".join(str(part) for part in first["loc"]) or "frame"
                    await self.refuse(POLICY, f"malformed frame: {where}: {first['msg']}"[:120], "malformed")
                    return
                if isinstance(frame, AuthFrame):
                    # never block the reading: acks of proven accounts must not wait behind proofs
                    if len(self._proofs) >= max(self.limits.accounts, CONCURRENT_PROOFS):
                        await self.refuse(POLICY, "too many proofs pending on this connection", "proofs")
                        return
                    task = asyncio.create_task(self._prove(frame))
                    self._proofs.add(task)
                    task.add_done_callback(self._proofs.discard)
                elif frame.account not in self.connection.accounts:
                    await self.refuse(
                        POLICY,
                        f"{frame.type} for an account not proven on this connection",
                        "unproven_account",
                    )
                    return
                elif isinstance(frame, AckFrame):
                    if not self.connection.acked(frame.id, frame.account, frame.status, frame.message):
                        log.info("ack %s for %s matches no delivery awaiting one", frame.id, frame.account)
                else:
                    await self._leave(frame)
        finally:
            watchdog.cancel()
            for task in list(self._proofs):
                task.cancel()
            claims = self.sockets.drop(self.connection)
            if self.counted_unproven:
                self.counted_unproven = False
                self.sockets.unproven -= 1
            for key, claim in claims.items():
                await self._release(key, claim)

    async def _release(self, key: str, claim: str) -> None:
        """The account's socket here is gone: so is its claim (a claim left behind, if this fails, is
        found stale by this replica's next delivery for the account, which then parks it)."""
        try:
            await self.manager.puppets.release_socket(key, claim)
        except Exception as exc:
            log.warning("puppet socket: releasing the claim of %s failed: %s", key, type(exc).__name__)

    async def _close_if_unproven(self) -> None:
        await asyncio.sleep(self.limits.proof_deadline)
        if not self.connection.accounts:
            await self.refuse(POLICY, f"no account proven within {self.limits.proof_deadline:g} s", "silent")

    async def _prove(self, frame: AuthFrame) -> None:
        key = account_key(frame.corpId, frame.kfId)
        connection = self.connection
        try:
            if key not in connection.accounts and len(connection.accounts) >= self.limits.accounts:
                raise ProofRefused("too_many_accounts", f"at most {self.limits.accounts} per connection")
            async with self._proof_slots:
                puppet, secret = await prove(self.manager, frame, self.caller)
                # Recorded before it is answered: from then on no replica marks the puppet offline,
                # and the lease holder hands the account over to this one. Also the heartbeat.
                claim, manager = secrets.token_hex(8), self.manager
                came_back = await manager.puppets.claim_socket(
                    key, manager.config.owner, manager.recovery.liveness.life, claim
                )
        except ProofRefused as exc:
            connection.failed_proofs += 1
            REFUSALS.labels(exc.reason).inc()
            warn_limited(log, exc.reason, "puppet socket: proof for %s refused: %s", key[:200], exc.message)
            answer = {"type": "refused", "id": frame.id, "account": key, "reason": exc.reason}
            await self._answer(answer | {"message": exc.message})
            if connection.failed_proofs >= self.limits.failed_proofs:
                await self.refuse(
                    POLICY, f"{connection.failed_proofs} proofs refused on this connection", "proofs"
                )
            return
        except Exception:
            log.exception("puppet socket: proving %s failed", key)
            await self._answer(
                {"type": "refused", "id": frame.id, "account": key, "reason": "unavailable"}
                | {"message": "the manager cannot check proofs now; retry later"}
            )
            return
        if connection.closed:  # it closed while the claim was written: nothing of it stays
            await self._release(key, claim)
            return
        self.sockets.attach(key, connection, claim)
        self._proven()
        authed = {"type": "authed", "id": frame.id, "account": key, "openKfId": puppet.open_kfid}
        # before any delivery: the puppet needs the new secret to check their signatures
        await self._answer(authed | ({"webhookSecret": secret} if secret else {}))
        log.info("puppet socket: %s proven", key)
        if came_back:
            log.info("puppet %s is back online", key)
        # served here now, whether or not it was offline: its mailbox may hold work another replica
        # handed over or parked while the puppet was connected elsewhere
        await self.manager.dispatcher.back_online(key)

    async def _leave(self, frame: LeaveFrame) -> None:
        corp_id, _, open_kfid = frame.account.partition("/")
        await self.manager.registration.deregister(corp_id, open_kfid)
        self.sockets.detach(frame.account, self.connection)
        claim = self.connection.claims.pop(frame.account, None)
        if claim is not None:
            await self._release(frame.account, claim)
        log.info("puppet socket: %s left (deregistered)", frame.account)
        await self._answer({"type": "left", "id": frame.id, "account": frame.account})

    async def _answer(self, frame: Mapping[str, object]) -> None:
        try:
            await self.connection.send(frame)
        except Exception:  # the connection is gone; its reader ends the session
            log.debug("puppet socket: answer not sent", exc_info=True)


def socket_routes(manager: Manager) -> list[BaseRoute]:
    sockets = manager.sockets

    async def endpoint(websocket: WebSocket) -> None:
        if sockets.unproven >= sockets.limits.unproven_connections:
            REFUSALS.labels("busy").inc()
            warn_limited(
                log, "busy", "puppet socket refused: %d connections are waiting to prove", sockets.unproven
            )
            await websocket.close(TRY_LATER)  # before accept: the handshake is refused
            return
        if not manager.recovery.liveness.valid():  # cut off from the database: try another replica
            REFUSALS.labels("fenced").inc()
            warn_limited(log, "fenced", "puppet socket refused: this replica cannot renew its leases")
            await websocket.close(TRY_LATER)
            return
        sockets.unproven += 1
        try:
            await websocket.accept()
        except BaseException:
            sockets.unproven -= 1
            raise
        try:
            await _Session(manager, sockets, Connection(websocket, sockets.limits)).run()
        except Exception as exc:  # the connection broke under a receive or a send: it is over
            warn_limited(log, "ended", "puppet socket ended: %s", f"{type(exc).__name__}: {exc}"[:200])

    return [WebSocketRoute(PATH, endpoint)]
