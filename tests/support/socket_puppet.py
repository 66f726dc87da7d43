"""A puppet on the manager's WebSocket (``/puppetWxkfManager/ws``) for many kf accounts, connected to
one manager replica at a time, that records every delivery as :class:`RecordingPuppet` does.

:meth:`SocketPuppet.connect` opens a connection to a manager, proves every account on it (registering
it, the first time, with the corp secret and callback keys; resuming it with its ``webhookSecret``
after) and serves the deliveries that arrive: each is checked (signature, decryption), recorded as
sent by the manager it is connected to, held open ``hold`` seconds and acked with 200. Reconnecting
to another replica, or that replica dying, ends the deliveries still open on the old connection
(unacknowledged, as a real puppet's would be), so two deliveries never overlap merely because the
puppet moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.recording_puppet import RecordingPuppet
from tests.support.replicas import Manager
from wecom.models import KfMsgOrEvent, parse_event
from wecom.xml import parse_xml
from wxkf import webhooks

WS_PATH = "/puppetWxkfManager/ws"
PROOF_TIMEOUT = 30.0


def _no_senders() -> dict[int, str]:
    return {}


@dataclass(repr=False)
class SocketPuppet(RecordingPuppet):
    accounts: list[str] = field(default_factory=list)
    corp_secret: str = field(default="", repr=False)
    webhook_secrets: dict[str, str] = field(default_factory=dict, repr=False)
    connected_to: str | None = None  # the label of the manager it is connected to
    _ws: ClientConnection | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _authed: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _closed: asyncio.Future[int | None] | None = None  # the manager's close code, once it closed

    async def connect(self, manager: Manager) -> None:
        """Leave the current manager (if any) and prove every account on ``manager``; returns once each
        is proven (deliveries are served from then on)."""
        await self.disconnect()
        ws = await connect(f"ws://127.0.0.1:{manager.port}{WS_PATH}", open_timeout=10, compression=None)
        self._ws, self.connected_to = ws, manager.label
        loop = asyncio.get_running_loop()
        self._authed = {kf: loop.create_future() for kf in self.accounts}
        self._closed = loop.create_future()
        reader = asyncio.create_task(self._receive(ws, manager.label))
        self._tasks.add(reader)
        reader.add_done_callback(self._tasks.discard)
        for n, kf in enumerate(self.accounts):
            await ws.send(json.dumps(self._auth(f"auth-{n}", kf)))
        async with asyncio.timeout(PROOF_TIMEOUT):
            answers = await asyncio.gather(*self._authed.values())
        refused = [answer for answer in answers if answer.get("type") != "authed"]
        assert not refused, f"proofs refused by {manager.label}: {refused}"

    def _auth(self, frame_id: str, kf: str) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "auth", "id": frame_id, "corpId": self.keys.corp_id, "kfId": kf}
        if kf in self.webhook_secrets:
            return frame | {"webhookSecret": self.webhook_secrets[kf]}
        keys = self.keys
        return frame | {"corpSecret": self.corp_secret, "token": keys.token, "encodingAESKey": keys.aes_key}

    async def disconnect(self) -> None:
        """Close the connection; deliveries still open on it end unacknowledged."""
        ws, self._ws, self.connected_to = self._ws, None, None
        if ws is not None:
            await ws.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _receive(self, ws: ClientConnection, sender: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for text in ws:
                frame = json.loads(text)
                kind, kf = frame.get("type"), str(frame.get("account", "")).partition("/")[2]
                if kind in ("authed", "refused"):
                    if kind == "authed" and "webhookSecret" in frame:
                        self.webhook_secrets[kf] = frame["webhookSecret"]
                    answer = self._authed.get(kf)
                    if answer is not None and not answer.done():
                        answer.set_result(frame)
                elif kind == "delivery":
                    task = asyncio.create_task(self._deliver(ws, sender, kf, frame))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        for answer in self._authed.values():
            if not answer.done():
                answer.set_result({"type": "closed", "by": sender})
        if self._closed is not None and not self._closed.done():
            received = ws.protocol.close_rcvd
            self._closed.set_result(received.code if received is not None else None)

    async def closed_by_manager(self, timeout: float) -> int | None:
        """Wait until the manager closes the connection; its close code (None: no close frame)."""
        assert self._closed is not None, "not connected"
        async with asyncio.timeout(timeout):
            return await asyncio.shield(self._closed)

    async def _deliver(self, ws: ClientConnection, sender: str, kf: str, frame: dict[str, Any]) -> None:
        try:
            token = self._token(kf, frame)
        except (KeyError, ValueError) as exc:  # a WebhookVerificationError is a ValueError
            self.refused.append(f"delivery from {sender} for {kf}: {exc!r}")
            status = 400
        else:
            await self.hold_open(kf, token, sender)
            status = 200
        ack = {"type": "ack", "id": frame["id"], "account": frame["account"], "status": status}
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps(ack))

    def _token(self, kf: str, frame: dict[str, Any]) -> str:
        """The callback Token a delivery carries, once its signature and encryption check out."""
        body = frame["body"].encode()
        webhooks.verify(self.webhook_secrets[kf], frame["headers"], body)
        query = {name: values[0] for name, values in parse_qs(frame["query"]).items()}
        encrypted = parse_xml(body)["Encrypt"]
        plain = self.keys.crypt.open(query["msg_signature"], query["timestamp"], query["nonce"], encrypted)
        event = parse_event(plain)
        if not isinstance(event, KfMsgOrEvent) or event.open_kf_id != kf:
            raise ValueError(f"not a kf_msg_or_event for {kf}")
        return event.token


def socket_puppet(keys: Any, corp_secret: str, accounts: list[str], hold: float = 0.2) -> SocketPuppet:
    """A :class:`SocketPuppet` for ``accounts`` of the corp app ``keys`` (not connected yet)."""
    return SocketPuppet(keys, _no_senders, hold, accounts=accounts, corp_secret=corp_secret)
