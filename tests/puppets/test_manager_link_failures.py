"""The registration loop survives whatever a request to the manager does: an error of a type httpx
does not wrap, a cancellation not aimed at the loop, a request that never ends. Before, any of these
ended the link task silently (the puppet logged ``lost the manager``, then nothing, unregistered for
good). A fake transport plays the manager; the link's waits return at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest

from puppets.account import Account, AccountSpec
from puppets.manager_link import ManagerLink

Fault = Callable[[], Awaitable[httpx.Response]]


class FakeAccount(SimpleNamespace):
    def __init__(self) -> None:
        spec = AccountSpec("wwCORP", "secret", "token", "a" * 43, open_kfid="wkA")
        super().__init__(spec=spec, open_kfid="wkA", corp_id="wwCORP", name="A", key="wwCORP/wkA")
        self.webhook_secrets: list[str] = []
        self.catch_ups = 0
        self.stopping = False

    def set_webhook_secret(self, secret: str | None) -> None:
        if secret:
            self.webhook_secrets = [secret]

    def catch_up(self) -> None:
        self.catch_ups += 1

    def start_pulling(self) -> None:
        pass


async def hang() -> httpx.Response:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def stray_cancellation() -> httpx.Response:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.cancel()  # as if another task cancelled what this request waited on
    await future
    raise AssertionError("unreachable")


async def not_an_httpx_error() -> httpx.Response:
    raise RuntimeError("a library's own error")


@pytest.mark.parametrize("fault", [hang, stray_cancellation, not_an_httpx_error])
async def test_a_failed_registration_of_any_kind_after_a_lost_heartbeat_is_retried(fault: Fault) -> None:
    # registered, the heartbeat fails (the hub was killed), the next registration meets the fault,
    # the one after it succeeds
    script: list[Fault] = [ok, lost, fault, ok]
    seen: list[str] = []

    async def manager(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path.rsplit("/", 1)[-1])
        return await script.pop(0)() if script else await hang()

    done = asyncio.Event()

    async def sleep(delay: float) -> None:
        if not script:
            done.set()
            await asyncio.Event().wait()

    account = FakeAccount()
    async with httpx.AsyncClient(transport=httpx.MockTransport(manager)) as http:
        link = ManagerLink(
            http, "http://manager", "http://puppet", cast(Account, account), sleep=sleep, attempt_timeout=0.2
        )
        running = asyncio.create_task(link.run())
        waiting = asyncio.create_task(done.wait())
        await asyncio.wait({running, waiting}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        ended = running.done()
        running.cancel()
        waiting.cancel()
        await asyncio.gather(running, waiting, return_exceptions=True)
    assert not ended, "the link task ended"
    assert seen == ["register", "heartbeat", "register", "register"]
    assert link.registrations == 2 and link.registered.is_set() and account.catch_ups == 2


async def ok() -> httpx.Response:
    answer: dict[str, Any] = {"code": 0, "message": "success", "webhookSecret": "whsec_x"}
    return httpx.Response(200, json=answer)


async def lost() -> httpx.Response:
    raise httpx.ReadError("")
