"""Attacks on a puppet's public callback routes (``/callback``, ``/callback/decrypted``), served on a
real socket: every bad input is a 4xx that names its reason, never a 500, and hands no token to the
puller (the pull count does not move)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest

from puppets import Bot
from tests.puppets.conftest import Corp, Hosted, corp, hosted, sim, sim_config
from tests.support.raw_http import slow_post
from tests.support.wecom_callbacks import CorpAppKeys, kf_event_xml, signed_post
from wxkf import http as wxkf_http
from wxkf import webhooks
from wxkf.logging import LIMITER

__all__ = ["corp", "hosted", "sim", "sim_config"]

Host = Callable[..., Awaitable[Hosted]]
UNREACHABLE_MANAGER = "http://127.0.0.1:9"  # nothing listens: registration keeps failing


async def started(hosted: Host, **config: object) -> Hosted:
    puppet = await hosted(Bot(), callback=False, **config)
    await asyncio.wait_for(puppet.account.puller.caught_up.wait(), 20)  # the start-up pull is over
    return puppet


@pytest.mark.parametrize("path", ["/callback?msg_signature=a&timestamp=1&nonce=n", "/callback/decrypted"])
async def test_a_trickled_body_is_a_408_not_a_500(
    hosted: Host, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    # read_body answers a slow body with a Refusal(408) the puppet's routes did not catch: a 500 and a
    # traceback in the log for each slow-loris request
    puppet = await started(hosted, manager=UNREACHABLE_MANAGER)
    monkeypatch.setattr(wxkf_http, "BODY_TIMEOUT", 0.5)
    async with asyncio.timeout(20):  # 200 bytes at 0.1 s: the body would take 20 s to arrive
        answer = await slow_post(puppet.url, path, declared=200, interval=0.1)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert answer.endswith(b"slow_body"), answer[-100:]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def signed(secret: str, body: bytes, **override: str) -> dict[str, str]:
    headers = {"content-type": "application/json", **webhooks.headers(secret, "msg_1", body)}
    return headers | override


@pytest.mark.parametrize(
    "forge",
    [
        "no headers",
        "other secret",
        "stale timestamp",
        "future timestamp",
        "huge timestamp",
        "negative huge timestamp",
        "non-integer timestamp",
        "body changed",
    ],
)
async def test_a_forged_delivery_to_a_signed_account_is_a_401_and_pulls_nothing(
    corp: Corp, hosted: Host, forge: str
) -> None:
    puppet = await started(hosted, manager=UNREACHABLE_MANAGER)
    secret = webhooks.generate_secret()
    puppet.account.set_webhook_secret(secret)  # as a registration's answer does
    pulls = puppet.account.puller.pulls
    body = json.dumps({"token": "forged-token", "openKfId": corp.kf}).encode()
    now = int(time.time())
    headers = {
        "no headers": {"content-type": "application/json"},
        "other secret": signed(webhooks.generate_secret(), body),
        "stale timestamp": webhooks.headers(secret, "m", body, timestamp=now - 301),
        "future timestamp": webhooks.headers(secret, "m", body, timestamp=now + 301),
        # int() takes 400 digits; subtracting it from time.time() raised OverflowError: a 500
        "huge timestamp": signed(secret, body, **{"webhook-timestamp": "9" * 400}),
        "negative huge timestamp": signed(secret, body, **{"webhook-timestamp": "-" + "9" * 400}),
        "non-integer timestamp": signed(secret, body, **{"webhook-timestamp": "1e9"}),
        "body changed": signed(secret, body),
    }[forge]
    sent = body.replace(b"forged-token", b"other-token") if forge == "body changed" else body
    async with httpx.AsyncClient(trust_env=False) as http:
        answer = await http.post(puppet.url + "/callback/decrypted", content=sent, headers=headers)
    reason = (
        "stale_webhook_timestamp"
        if forge in ("stale timestamp", "future timestamp")
        else "bad_webhook_signature"
    )
    assert answer.status_code == 401 and answer.text == reason, (answer.status_code, answer.text)
    assert puppet.account.puller.pulls == pulls
    # the genuine delivery still works
    async with httpx.AsyncClient(trust_env=False) as http:
        genuine = await http.post(
            puppet.url + "/callback/decrypted", content=body, headers=signed(secret, body)
        )
    assert genuine.status_code == 200 and genuine.text == "roger"


async def test_before_its_registration_is_answered_a_puppet_with_a_manager_takes_no_unsigned_delivery(
    corp: Corp, hosted: Host
) -> None:
    # Until the manager answers a registration the puppet cannot know whether it will issue a secret,
    # and took every unsigned {"token", "openKfId"} from anyone: while the manager was unreachable an
    # attacker could feed made-up tokens (each a failed sync_msg and a token-less pull) and overwrite
    # the real newest one. A 503 is retried by a manager that delivers early.
    puppet = await started(hosted, manager=UNREACHABLE_MANAGER)
    pulls = puppet.account.puller.pulls
    body = {"token": "made-up-token", "openKfId": corp.kf}
    async with httpx.AsyncClient(trust_env=False) as http:
        answer = await http.post(puppet.url + "/callback/decrypted", json=body)
    assert answer.status_code == 503 and answer.text == "not_registered", (answer.status_code, answer.text)
    assert puppet.account.puller.pulls == pulls
    # a Node manager registers without issuing a secret: from then on unsigned deliveries are its own
    puppet.account.set_webhook_secret(None)
    async with httpx.AsyncClient(trust_env=False) as http:
        accepted = await http.post(puppet.url + "/callback/decrypted", json=body)
    assert accepted.status_code == 200 and accepted.text == "roger"


async def test_a_wecom_signed_callback_before_registration_is_also_held_back(
    corp: Corp, hosted: Host
) -> None:
    # the raw route's XML is WeCom-signed, but in manager mode it arrives relayed, with the Standard
    # Webhooks signature that cannot be checked before the registration answered
    puppet = await started(hosted, manager=UNREACHABLE_MANAGER)
    pulls = puppet.account.puller.pulls
    query, xml = signed_post(
        CorpAppKeys(corp.corpid, corp.token, corp.aes_key), kf_event_xml(corp.corpid, corp.kf, "t")
    )
    async with httpx.AsyncClient(trust_env=False) as http:
        answer = await http.post(f"{puppet.url}/callback?{query}", content=xml)
    assert answer.status_code == 503 and answer.text == "not_registered", (answer.status_code, answer.text)
    assert puppet.account.puller.pulls == pulls


async def test_a_flood_of_forged_callbacks_logs_a_bounded_number_of_warnings(
    corp: Corp, hosted: Host, caplog: pytest.LogCaptureFixture
) -> None:
    # each refusal was one warning line: anyone who can reach /callback could fill the log (and the
    # disk) as fast as they could send; the hub's own routes rate-limit them per reason
    puppet = await started(hosted)
    wrong = CorpAppKeys(corp.corpid, "not-the-token", corp.aes_key)
    caplog.set_level(logging.WARNING, logger="puppets.routes")
    async with httpx.AsyncClient(trust_env=False, base_url=puppet.url) as http:
        for n in range(50):
            query, xml = signed_post(wrong, kf_event_xml(corp.corpid, corp.kf, f"t{n}"))
            answer = await http.post(f"/callback?{query}", content=xml)
            assert answer.status_code == 403 and answer.text == "bad_signature"
    warnings = [r for r in caplog.records if r.name == "puppets.routes" and r.levelno == logging.WARNING]
    assert 1 <= len(warnings) <= LIMITER.burst, len(warnings)  # before: 50


@pytest.mark.parametrize("skew", [-360, 360], ids=["manager behind", "manager ahead"])
async def test_a_managers_clock_off_by_minutes_is_named_in_the_refusal(
    corp: Corp, hosted: Host, caplog: pytest.LogCaptureFixture, skew: int
) -> None:
    # a manager whose clock is more than the 5-minute tolerance off this puppet's has every delivery
    # refused (401: permanent, so dead-lettered; the safety-net pull still finds the messages): the
    # refusal must say it is the clock, not a key, so the operator knows what to fix
    puppet = await started(hosted, manager=UNREACHABLE_MANAGER)
    secret = webhooks.generate_secret()
    puppet.account.set_webhook_secret(secret)
    body = json.dumps({"token": "t", "openKfId": corp.kf}).encode()
    headers = webhooks.headers(secret, "msg_skewed", body, timestamp=int(time.time()) + skew)
    caplog.set_level(logging.WARNING, logger="puppets.routes")
    async with httpx.AsyncClient(trust_env=False) as http:
        answer = await http.post(puppet.url + "/callback/decrypted", content=body, headers=headers)
    assert answer.status_code == 401 and answer.text == "stale_webhook_timestamp"
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "puppets.routes"]
    assert f"signed {skew:+d} s from this clock" in warning or f"signed {skew - 1:+d} s" in warning, warning
    assert "clock" in warning


async def test_decrypted_callbacks_for_accounts_not_served_log_a_bounded_number_of_lines(
    corp: Corp, hosted: Host, caplog: pytest.LogCaptureFixture
) -> None:
    # each was an INFO line: with a manager configured, anyone could write one per request. The answer
    # was roger, as the Node puppet's, which told the manager a stale registration took the events;
    # now 404 account_not_served (tests/manager/test_unserved_account.py), which says no more than that
    puppet = await started(hosted, manager=UNREACHABLE_MANAGER)
    caplog.set_level(logging.INFO, logger="puppets.routes")
    async with httpx.AsyncClient(trust_env=False, base_url=puppet.url) as http:
        for n in range(50):
            answer = await http.post("/callback/decrypted", json={"token": "t", "openKfId": f"wkNOBODY{n}"})
            assert answer.status_code == 404 and answer.text == "account_not_served"
    lines = [r for r in caplog.records if r.name == "puppets.routes"]
    assert 1 <= len(lines) <= LIMITER.burst, len(lines)  # before: 50
    assert not [line for line in lines if "wkNOBODY" in line.getMessage()]  # the caller's id is not logged
