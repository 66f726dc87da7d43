"""What an unauthenticated caller can make the gateway do: bounded registry work, and the bearer token
``wxkf gateway`` presents to the manager it forwards to."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import AnyHttpUrl, SecretStr

from gateway import registry as registry_module
from gateway.app import build_gateway, gateway_app
from gateway.intake import open_callback
from gateway.registry import AppRegistry
from tests.support.clock import FakeClock
from tests.support.recorder import Recorder
from tests.support.servers import serve_app
from tests.support.wecom_callbacks import CorpAppKeys, kf_event_xml, signed_post
from wxkf.database import Database
from wxkf.http import Refusal
from wxkf.runtime import open_runtime
from wxkf.secretbox import SecretBox
from wxkf.settings import Settings

CORPS = 20


class CountingBox(SecretBox):
    """A secret box that counts decryptions: each is work a caller made the registry do."""

    opened = 0

    def open(self, sealed: str, *, context: str) -> str:
        CountingBox.opened += 1
        return super().open(sealed, context=context)


@pytest.fixture
async def registry(db: Database) -> AsyncIterator[tuple[AppRegistry, FakeClock, list[CorpAppKeys]]]:
    clock = FakeClock()
    apps = AppRegistry(db, CountingBox(secrets.token_bytes(32)), clock=clock)
    await apps.ensure_indexes()
    keys = [CorpAppKeys.random() for _ in range(CORPS)]
    for corp in keys:
        await apps.add(corp.corp_id, None, corp.token, corp.aes_key)
    CountingBox.opened = 0
    yield apps, clock, keys


async def callback(apps: AppRegistry, corp_id: str, keys: CorpAppKeys, *, forged: bool) -> None:
    query, body = signed_post(keys, kf_event_xml(keys.corp_id, "wkA", "sync-token"))
    params = dict(pair.split("=", 1) for pair in query.split("&"))
    if forged:
        params["msg_signature"] = "0" * 40
    with pytest.raises(Refusal):
        await open_callback(apps, corp_id, None, params, query, body)


async def test_unknown_corps_decrypt_nothing_and_their_lookups_are_rate_limited(
    registry: tuple[AppRegistry, FakeClock, list[CorpAppKeys]],
) -> None:
    apps, clock, keys = registry
    for n in range(200):  # a second apart: the old registry reloaded (and decrypted) every app each time
        clock.advance(1.1)
        await callback(apps, f"wwbogus{n % 7}", keys[0], forged=False)
    assert CountingBox.opened == 0
    # a burst of random corp ids at one instant: at most refreshes_per_second of them reach the database
    before = apps.refreshes
    for n in range(1000):
        await callback(apps, f"wwrandom{n}", keys[0], forged=False)
    assert apps.refreshes - before <= 20
    assert CountingBox.opened == 0


async def test_bad_signatures_refresh_only_their_corp_and_at_most_once_per_interval(
    registry: tuple[AppRegistry, FakeClock, list[CorpAppKeys]],
) -> None:
    apps, clock, keys = registry
    target = keys[3]
    for _ in range(100):
        clock.advance(0.5)  # 50 s of forged callbacks, two a second
        await callback(apps, target.corp_id, target, forged=True)
    # one app (token, key: two decryptions) per refresh, one refresh per 2 s: 25 refreshes
    assert CountingBox.opened <= 2 * 26
    assert apps.refreshes <= 26
    # a rotated key is still picked up at once after the interval
    rotated = CorpAppKeys.random(target.corp_id)
    other = AppRegistry(apps._collection.database, apps._box)
    await other.add(rotated.corp_id, None, rotated.token, rotated.aes_key)
    clock.advance(2.5)
    query, body = signed_post(rotated, kf_event_xml(rotated.corp_id, "wkA", "sync-token"))
    params = dict(pair.split("=", 1) for pair in query.split("&"))
    event = await open_callback(apps, rotated.corp_id, None, params, query, body)
    assert event.open_kf_id == "wkA"


async def test_the_memory_of_refreshed_corps_is_bounded(
    registry: tuple[AppRegistry, FakeClock, list[CorpAppKeys]], monkeypatch: pytest.MonkeyPatch
) -> None:
    apps, clock, _ = registry
    monkeypatch.setattr(registry_module, "REFRESH_MEMORY", 50, raising=False)
    for n in range(500):
        clock.advance(1.0)
        await apps.resolve(f"wwmany{n}", None)
    assert apps.refreshes >= 500
    assert len(apps._refreshed) <= 50


@pytest.fixture
async def manager_stand_in() -> AsyncIterator[tuple[Recorder, str]]:
    recorder = Recorder()
    async with serve_app(recorder.app()) as url:
        yield recorder, url


async def test_wxkf_gateway_sends_the_gateway_token_to_the_manager(
    settings: Settings, manager_stand_in: tuple[Recorder, str]
) -> None:
    recorder, manager_url = manager_stand_in
    token = "gw-" + secrets.token_hex(12)
    changes: dict[str, Any] = {
        "manager_endpoint": AnyHttpUrl(manager_url),
        "wxkf_gateway_token": SecretStr(token),
    }
    keys = CorpAppKeys.random()
    async with open_runtime(settings.model_copy(update=changes)) as runtime:
        gateway = build_gateway(runtime)
        await gateway.start()
        await gateway.registry.add(keys.corp_id, None, keys.token, keys.aes_key)
        try:
            async with serve_app(gateway_app(gateway, None)) as url, httpx.AsyncClient() as http:
                query, body = signed_post(keys, kf_event_xml(keys.corp_id, "wkA", "sync-token"))
                answer = await http.post(f"{url}/callback/{keys.corp_id}?{query}", content=body)
                assert answer.text == "success"
                (forwarded,) = await recorder.wait_for(1)
        finally:
            await gateway.stop()
    assert forwarded["path"] == f"/callback/decrypted/{keys.corp_id}"
    assert forwarded["headers"]["authorization"] == f"Bearer {token}"
