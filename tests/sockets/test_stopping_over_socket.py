"""A socket puppet that is stopping acks ``503 stopping``: a real ``wxkf up`` marks it offline and keeps
the event (no failed attempt, no retry on the old socket), and the event flows when the puppet's
successor proves the account on a new connection."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from tests.puppets.conftest import Corp, wait_until
from tests.sockets.conftest import hub_log
from tests.sockets.test_socket_protocol import delivery
from tests.support.services import ServiceProcess, puppet_info


async def test_a_stopping_ack_parks_the_account_until_a_successor_proves_it(
    corp: Corp, hub: ServiceProcess, raw_socket: Callable[[], Any]
) -> None:
    await corp.set_callback(f"{hub.url}/callback/{corp.corpid}")
    account = f"{corp.corpid}/{corp.kf}"
    async with raw_socket() as stopping:
        authed = await stopping.register(corp)
        assert authed["type"] == "authed", authed
        secret = authed["webhookSecret"]
        await corp.says("during the drain")
        refused = await delivery(stopping, account)
        ack = {"type": "ack", "id": refused["id"], "account": account, "status": 503, "message": "stopping"}
        await stopping.send(ack)

        async def offline() -> bool:
            return (await puppet_info(hub, corp, secret))["online"] is False

        # still connected, yet offline: the manager waits for a registration, not for a retry time
        await wait_until(offline, what="the stopping puppet marked offline")
        # and nothing was retried on the stopping socket (a retry would have come before "offline")
        with contextlib.suppress(TimeoutError):
            retried = await stopping.receive(timeout=0.5)
            raise AssertionError(f"a stopping puppet got a retry: {retried}")
        async with raw_socket() as successor:
            await successor.send(
                {"type": "auth", "corpId": corp.corpid, "kfId": corp.kf, "webhookSecret": secret}
            )
            assert (await successor.receive())["type"] == "authed"
            flowed = await delivery(successor, account)  # at once, without a new callback
            assert flowed["headers"]["webhook-id"] == refused["headers"]["webhook-id"]
            await successor.send({"type": "ack", "id": flowed["id"], "account": account, "status": 200})
            assert (await puppet_info(hub, corp, secret))["online"] is True
    log = hub_log(hub)
    assert "is stopping" in log
    assert "failed (socket ack 503" not in log  # never counted as a failed attempt
