"""The manager's side of ``/puppetWxkfManager/ws``, frame by frame, with a hand-written client against a
real ``wxkf up``: deliveries signed as over HTTP and acked per id, the mailbox waiting while no socket is
open, and every forged, malformed or silent connection refused with a reason."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.puppets.conftest import Corp, wait_until
from tests.sockets.conftest import WS_PATH, RawSocket, hub_log
from tests.support.services import ServiceProcess, puppet_info
from wxkf import webhooks


async def delivery(client: RawSocket, account: str) -> dict[str, Any]:
    frame = await client.receive()
    assert frame["type"] == "delivery", frame
    assert frame["account"] == account
    return frame


def check_signed(frame: dict[str, Any], secret: str) -> None:
    webhooks.verify(secret, frame["headers"], frame["body"].encode())  # raises if forged


async def test_deliveries_are_signed_frames_and_wait_in_the_mailbox_while_no_socket_is_open(
    corp: Corp, hub: ServiceProcess, raw_socket: Callable[[], Any]
) -> None:
    await corp.set_callback(f"{hub.url}/callback/{corp.corpid}")
    account = f"{corp.corpid}/{corp.kf}"
    async with raw_socket() as client:
        authed = await client.register(corp)
        assert authed["type"] == "authed" and authed["account"] == account, authed
        secret = authed["webhookSecret"]
        await corp.says("one")
        first = await delivery(client, account)
        check_signed(first, secret)
        assert first["path"] == "/callback"  # the encrypted XML with WeCom's query, as over HTTP
        assert "msg_signature" in parse_qs(first["query"])
        assert first["headers"]["content-type"] == "application/xml"
        await client.send({"type": "ack", "id": first["id"], "account": account, "status": 200})
    # no socket: the hub finds the puppet unreachable, marks it offline and keeps the event
    await corp.says("two")
    await wait_until(lambda: _offline(hub, corp, secret), what="the puppet marked offline")
    async with raw_socket() as client:
        await client.send({"type": "auth", "corpId": corp.corpid, "kfId": corp.kf, "webhookSecret": secret})
        resumed = await client.receive()
        assert resumed["type"] == "authed" and "webhookSecret" not in resumed
        waited = await delivery(client, account)  # flows at once, without a new callback
        check_signed(waited, secret)
        assert waited["headers"]["webhook-id"] != first["headers"]["webhook-id"]
        await client.send({"type": "ack", "id": waited["id"], "account": account, "status": 200})
        assert (await puppet_info(hub, corp, secret))["online"] is True
    # the proof counted as a heartbeat (not a probe seconds later): the mailbox flowed at once
    assert f"puppet {account} is back online" in hub_log(hub)


async def _offline(hub: ServiceProcess, corp: Corp, secret: str) -> bool:
    return (await puppet_info(hub, corp, secret))["online"] is False


async def test_a_failed_ack_is_retried_like_a_failed_http_delivery(
    corp: Corp, hub: ServiceProcess, raw_socket: Callable[[], Any]
) -> None:
    await corp.set_callback(f"{hub.url}/callback/{corp.corpid}")
    account = f"{corp.corpid}/{corp.kf}"
    async with raw_socket() as client:
        assert (await client.register(corp))["type"] == "authed"
        await corp.says("one")
        refused = await delivery(client, account)
        await client.send(
            {"type": "ack", "id": refused["id"], "account": account, "status": 503, "message": "busy"}
        )
        again = await delivery(client, account)  # the retry schedule's first delay
        assert again["headers"]["webhook-id"] == refused["headers"]["webhook-id"]
        await client.send({"type": "ack", "id": again["id"], "account": account, "status": 200})
    assert "socket ack 503: 'busy'" in hub_log(hub)


async def test_a_wrong_secret_is_refused_with_a_reason_and_three_close_the_connection(
    corp: Corp, hub: ServiceProcess, raw_socket: Callable[[], Any]
) -> None:
    async with raw_socket() as client:
        forged = {"type": "auth", "corpId": corp.corpid, "kfId": corp.kf, "corpSecret": "not-the-secret"}
        forged |= {"token": corp.token, "encodingAESKey": corp.aes_key}
        await client.send(forged)
        refused = await client.receive()
        assert refused["type"] == "refused" and refused["reason"] == "registration_refused", refused
        await client.send(
            {"type": "auth", "corpId": corp.corpid, "kfId": corp.kf, "webhookSecret": "whsec_x"}
        )
        assert (await client.receive())["reason"] == "proof_refused"
        await client.send({"type": "auth", "corpId": corp.corpid, "kfId": corp.kf})
        assert (await client.receive())["reason"] == "no_proof"
        assert await client.closed() == (1008, "3 proofs refused on this connection")
    assert "not-the-secret" not in hub_log(hub)


async def test_a_frame_for_an_account_not_proven_on_the_connection_closes_it(
    corp: Corp, other_corp: tuple[Corp, Corp], hub: ServiceProcess, raw_socket: Callable[[], Any]
) -> None:
    support, _ = other_corp
    async with raw_socket() as client:
        assert (await client.register(corp))["type"] == "authed"
        # another corp's account: acking or deregistering it is refused, whatever the id
        await client.send({"type": "leave", "account": f"{support.corpid}/{support.kf}"})
        assert await client.closed() == (1008, "leave for an account not proven on this connection")
    async with raw_socket() as client:
        assert (await client.register(corp))["type"] == "authed"
        await client.send(
            {"type": "ack", "id": "1", "account": f"{support.corpid}/{support.kf}", "status": 200}
        )
        assert await client.closed() == (1008, "ack for an account not proven on this connection")


@pytest.mark.parametrize(
    ("frame", "code", "reason"),
    [
        ("x" * (64 * 1024 + 1), 1009, "frame exceeds 65536 bytes"),
        ("{not json", 1008, "malformed frame: frame: Invalid JSON: key must be a string at line 1 column 2"),
        (json.dumps({"type": "hello", "id": "1"}), 1008, "malformed frame: frame: Input tag 'hello'"),
        (json.dumps({"type": "auth", "id": "1", "corpId": "ww", "kfId": "k" * 200}), 1008, "malformed frame"),
        (b"\x00binary", 1003, "binary frames are not part of the protocol"),
    ],
    ids=["oversize", "not-json", "unknown-type", "oversize-field", "binary"],
)
async def test_a_malformed_frame_closes_the_connection_with_a_reason(
    hub: ServiceProcess, raw_socket: Callable[[], Any], frame: str | bytes, code: int, reason: str
) -> None:
    async with raw_socket() as client:
        await client.ws.send(frame)
        closed_code, closed_reason = await client.closed()
    assert closed_code == code
    assert closed_reason.startswith(reason), closed_reason
    assert await _healthy(hub)
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{hub.url}/metrics")).text
    label = {1009: "too_big", 1003: "binary"}.get(code, "malformed")
    assert f'wxkf_manager_socket_refusals_total{{reason="{label}"}} 1.0' in metrics


async def test_a_silent_connection_is_closed_and_secrets_in_the_url_are_not_read(
    corp: Corp, hub: ServiceProcess
) -> None:
    url = f"ws://127.0.0.1:{hub.port}{WS_PATH}?corpId={corp.corpid}&kfId={corp.kf}&corpSecret={corp.secret}"
    async with connect(url, open_timeout=10) as ws:
        client = RawSocket(ws)
        assert await client.closed() == (1008, "no account proven within 5 s")
    with pytest.raises(ConnectionClosed):
        await client.receive()
    assert "Traceback" not in hub_log(hub)
    assert await _healthy(hub)


async def _healthy(hub: ServiceProcess) -> bool:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{hub.url}/healthz")).status_code == 200


async def test_the_newest_connection_to_prove_an_account_takes_its_deliveries(
    corp: Corp, hub: ServiceProcess, raw_socket: Callable[[], Any]
) -> None:
    await corp.set_callback(f"{hub.url}/callback/{corp.corpid}")
    account = f"{corp.corpid}/{corp.kf}"
    async with raw_socket() as old, raw_socket() as new:
        secret = (await old.register(corp))["webhookSecret"]
        await new.send({"type": "auth", "corpId": corp.corpid, "kfId": corp.kf, "webhookSecret": secret})
        assert (await new.receive())["type"] == "authed"
        await corp.says("one")
        frame = await delivery(new, account)
        await new.send({"type": "ack", "id": frame["id"], "account": account, "status": 200})
        # the old connection (a puppet's half-open one, say) no longer speaks for the account
        await old.send({"type": "leave", "account": account})
        assert await old.closed() == (1008, "leave for an account not proven on this connection")
        assert (await puppet_info(hub, corp, secret))["registered"] is True


async def test_an_account_registered_over_http_is_resumed_on_a_socket_only_with_the_endpoint_ws(
    corp: Corp, hub: ServiceProcess, raw_socket: Callable[[], Any]
) -> None:
    async def register(endpoint: str) -> str:
        body = {"kfId": corp.kf, "endpoint": endpoint, "corpId": corp.corpid, "corpSecret": corp.secret}
        body |= {"token": corp.token, "encodingAESKey": corp.aes_key}
        async with httpx.AsyncClient() as http:
            answer = await http.post(f"{hub.url}/puppetWxkfManager/register", json=body)
        assert answer.status_code == 200, answer.text
        secret: str = answer.json()["webhookSecret"]
        return secret

    async def resume(secret: str) -> dict[str, Any]:
        async with raw_socket() as client:
            await client.send(
                {"type": "auth", "corpId": corp.corpid, "kfId": corp.kf, "webhookSecret": secret}
            )
            return await client.receive()

    http_secret = await register("http://127.0.0.1:9")
    assert (await resume(http_secret))["reason"] == "not_a_socket_puppet"
    ws_secret = await register("ws:")
    assert (await resume(ws_secret))["type"] == "authed"
