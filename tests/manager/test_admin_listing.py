"""The admin API's event listings: an account's events page through all of them (bounded, validated), and
under ``wxkf up`` ``GET /admin/events/{id}`` finds kf events, which only the manager's log holds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette

from hub.up import Hub
from manager.admin import admin_routes
from manager.mailbox import DECRYPTED, EVENTS, Latest, arrival_key
from manager.service import Manager
from tests.manager.conftest import make_manager
from tests.support.servers import serve_app
from tests.support.wecom_callbacks import CorpAppKeys, kf_event_xml, signed_post
from wxkf.runtime import Runtime, open_runtime
from wxkf.settings import Settings

CORP = "wwpaging"
AUTH = {"authorization": "Bearer admin-token"}


@pytest.fixture
async def admin(runtime: Runtime) -> AsyncIterator[tuple[Manager, httpx.AsyncClient]]:
    manager = make_manager(runtime)
    await manager.start()
    app = Starlette(routes=admin_routes(manager, "admin-token"))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://hub") as http:
            yield manager, http
    finally:
        await manager.stop()


async def park_events(manager: Manager, kf: str, count: int) -> list[str]:
    """``count`` events for an account with no puppet (logged and parked), in arrival order."""
    ids = [f"ev-{n:05d}" for n in range(count)]
    start = 1_800_000_000.0
    await asyncio.gather(
        *(
            manager.mailboxes.accept(
                CORP, kf, Latest(i, arrival_key(start + n, i), DECRYPTED, token=f"t{n}"), parked=True
            )
            for n, i in enumerate(ids)
        )
    )
    return ids


async def test_an_accounts_events_page_past_the_first_thousand(
    admin: tuple[Manager, httpx.AsyncClient],
) -> None:
    manager, http = admin
    ids = await park_events(manager, "wkMany", 1005)
    seen: list[str] = []
    after = ""
    pages = 0
    while True:
        response = await http.get(
            f"/admin/accounts/{CORP}/wkMany/events", params={"limit": 400, "after": after}, headers=AUTH
        )
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["events"]) <= 400
        seen.extend(event["id"] for event in page["events"])
        pages += 1
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == ids  # every event once, oldest first
    assert pages == 3
    first = (await http.get(f"/admin/accounts/{CORP}/wkMany/events", headers=AUTH)).json()
    assert len(first["events"]) == 100 and first["next"] is not None  # a bounded default page


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=-1", "limit=1001", "limit=1e3", "limit=" + "9" * 5000, "after=" + quote("a b"),
     "after=%00", "after=" + "x" * 201],
)  # fmt: skip
async def test_event_paging_refuses_bad_parameters_with_a_reason(
    admin: tuple[Manager, httpx.AsyncClient], query: str
) -> None:
    manager, http = admin
    await park_events(manager, "wkBad", 1)
    response = await http.get(f"/admin/accounts/{CORP}/wkBad/events?{query}", headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"].split(":")[0] in ("limit", "after")


async def test_under_up_a_kf_event_is_found_in_the_managers_log(settings: Settings) -> None:
    settings = settings.model_copy(update={"wxkf_admin_token": SecretStr("admin-token")})
    keys = CorpAppKeys.random()
    async with open_runtime(settings) as runtime:
        hub = Hub(runtime)
        await hub.start()
        try:
            await hub.gateway.registry.add(keys.corp_id, None, keys.token, keys.aes_key)
            async with serve_app(hub.app()) as url, httpx.AsyncClient(base_url=url) as http:
                query, body = signed_post(keys, kf_event_xml(keys.corp_id, "wkUp", "sync-secret-token"))
                stored = await http.post(f"/callback/{keys.corp_id}?{query}", content=body)
                assert stored.status_code == 200
                logged = await runtime.db[EVENTS].find_one({"open_kfid": "wkUp"})
                assert logged is not None
                shown = await http.get(f"/admin/events/{logged['_id']}", headers=AUTH)
                assert shown.status_code == 200, shown.text
                event = shown.json()
                assert event["store"] == "manager_events"
                assert event["open_kfid"] == "wkUp"
                assert "sync-secret-token" not in shown.text and "body" not in event
                missing = await http.get("/admin/events/no-such-event", headers=AUTH)
                assert missing.status_code == 404
        finally:
            await hub.stop()
