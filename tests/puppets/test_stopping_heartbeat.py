"""A puppet that is stopping sends no heartbeat: to the manager a heartbeat means "deliver to me", and
every delivery would be refused ``503 stopping`` (the manager would mark the puppet online, deliver,
and mark it offline again, once per heartbeat, until the deregistration)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from puppets.bot import Bot
from puppets.manager_link import ManagerLink
from tests.puppets.conftest import Hosted
from tests.support.recorder import Recorder
from tests.support.servers import serve_app
from wxkf import webhooks


async def test_a_stopping_account_sends_no_heartbeat(hosted: Callable[..., Awaitable[Hosted]]) -> None:
    served = await hosted(Bot(), callback=False)
    account = served.account
    account.set_webhook_secret(webhooks.generate_secret())  # as the registration's answer does
    manager = Recorder()  # answers every POST "roger": it only counts what reaches it
    async with serve_app(manager.app()) as manager_url, httpx.AsyncClient(trust_env=False) as http:
        link = ManagerLink(http, manager_url, served.url, account)
        await account.stop_pulling()
        await link.heartbeat()
    assert manager.attempts == 0
