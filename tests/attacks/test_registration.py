"""Attacks on ``/puppetWxkfManager/register`` by someone who holds a corpSecret (any puppet operator of
a corp; on a shared hub, any tenant): what one registration may create."""

from __future__ import annotations

import secrets

from gateway.registry import COLLECTION as CORP_APPS
from manager import registration as registration_module
from tests.manager.test_compat_e2e import World, hub_settings, simulator, world
from tests.support.wecom_callbacks import new_aes_key

__all__ = ["hub_settings", "simulator", "world"]


async def test_fresh_callback_keys_on_every_registration_do_not_grow_the_corps_apps_without_bound(
    world: World,
) -> None:
    # each registration with callback credentials the hub has not seen added a corp app (one more
    # document, and a reload decrypting every app of every corp), for as long as the caller liked
    limit = registration_module.APPS_PER_CORP
    db = world.hub.manager.db  # type: ignore[union-attr]
    assert (await world.puppet().register(world.hub_url, "http://127.0.0.1:9")).json()["code"] == 0
    answers = []
    for _ in range(limit + 5):
        body = world.puppet().register_body("http://127.0.0.1:9")
        body |= {"token": secrets.token_hex(8), "encodingAESKey": new_aes_key()}
        answers.append(
            (await world.http.post(f"{world.hub_url}/puppetWxkfManager/register", json=body)).json()
        )
    assert await db[CORP_APPS].count_documents({"corp_id": world.corpid}) <= limit
    refused = [a for a in answers if a["code"] != 0]
    assert refused and all(a["code"] == 409 and "apps" in a["message"] for a in refused)
    # credentials the corp already has still register
    assert (await world.puppet().register(world.hub_url, "http://127.0.0.1:9")).json()["code"] == 0
