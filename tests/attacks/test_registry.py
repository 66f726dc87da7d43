"""Attacks on the gateway's corp refreshes (what an unknown corp id or a bad signature makes a
replica do): a flood of random corp ids, which anyone can send, must not use up the refreshes that
let a replica pick up a key rotated through another replica."""

from __future__ import annotations

import secrets

import pytest

from gateway.intake import open_callback
from gateway.registry import AppRegistry
from tests.support.clock import FakeClock
from tests.support.wecom_callbacks import CorpAppKeys, kf_event_xml, signed_post
from wxkf.database import Database
from wxkf.http import Refusal
from wxkf.secretbox import SecretBox


def callback_params(keys: CorpAppKeys) -> tuple[dict[str, str], str, bytes]:
    query, body = signed_post(keys, kf_event_xml(keys.corp_id, "wkA", "sync-token"))
    return dict(pair.split("=", 1) for pair in query.split("&")), query, body


async def test_a_flood_of_random_corp_ids_does_not_starve_a_rotated_keys_refresh(db: Database) -> None:
    clock = FakeClock()
    box = SecretBox(secrets.token_bytes(32))
    apps = AppRegistry(db, box, clock=clock)
    await apps.ensure_indexes()
    corp = CorpAppKeys.random()
    await apps.add(corp.corp_id, None, corp.token, corp.aes_key)
    # the key is rotated through another replica; this one still holds the old key
    rotated = CorpAppKeys.random(corp.corp_id)
    await AppRegistry(db, box).add(rotated.corp_id, None, rotated.token, rotated.aes_key)
    clock.advance(10)
    for n in range(1000):  # at one instant, as fast as the attacker can send them
        params, query, body = callback_params(corp)
        with pytest.raises(Refusal):
            await open_callback(apps, f"wwflood{n}", None, params, query, body)
    # WeCom's next callback, signed with the new key: the replica refreshes the corp and accepts it
    params, query, body = callback_params(rotated)
    event = await open_callback(apps, rotated.corp_id, None, params, query, body)
    assert event.open_kf_id == "wkA"
