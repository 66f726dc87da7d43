"""A puppet's answer to a callback for an account it does not serve, on its real routes.

With a manager configured, the sender is the manager delivering to a stale registration: the answer
is ``404 account_not_served`` (so the manager keeps the events; tests/manager/test_unserved_account.py),
whether the corp is served here or not, and it says nothing more than that — no account, no corp, no
secret — to anyone who asks, with a bounded number of warnings. Without a manager the sender is WeCom,
which calls the one URL for every account of the app: ``success``, or it would retry for nothing."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.attacks.test_puppet_routes import UNREACHABLE_MANAGER, Host, started
from tests.puppets.conftest import Corp, corp, hosted, sim, sim_config
from tests.support.wecom_callbacks import CorpAppKeys, kf_event_xml, signed_post
from wxkf.logging import LIMITER

__all__ = ["corp", "hosted", "sim", "sim_config"]


def callbacks(corp: Corp, count: int) -> list[tuple[str, bytes]]:
    """WeCom-signed callbacks for accounts the puppet does not serve: half in its corp, half not."""
    served_corp = CorpAppKeys(corp.corpid, corp.token, corp.aes_key)
    made = []
    for n in range(count):
        keys = served_corp if n % 2 else CorpAppKeys.random()
        made.append(signed_post(keys, kf_event_xml(keys.corp_id, f"wkNOBODY{n}", f"tok-{n}")))
    return made


async def test_with_a_manager_a_callback_for_an_account_not_served_is_a_404_that_names_nothing(
    corp: Corp, hosted: Host, caplog: pytest.LogCaptureFixture
) -> None:
    puppet = await started(hosted, manager=UNREACHABLE_MANAGER)
    pulls = puppet.account.puller.pulls
    caplog.set_level(logging.INFO, logger="puppets.routes")
    async with httpx.AsyncClient(trust_env=False, base_url=puppet.url) as http:
        for query, body in callbacks(corp, 40):
            answer = await http.post(f"/callback?{query}", content=body)
            # before: 200 success for the served corp (the manager took it as delivered), 403
            # bad_signature for the other (a permanent failure: dead-lettered)
            assert (answer.status_code, answer.text) == (404, "account_not_served")
    lines = [r for r in caplog.records if r.name == "puppets.routes"]
    assert 1 <= len(lines) <= LIMITER.burst, len(lines)
    assert all(r.levelno == logging.WARNING for r in lines)
    assert not [r for r in lines if corp.secret in r.getMessage() or corp.aes_key in r.getMessage()]
    assert puppet.account.puller.pulls == pulls  # nothing handed to a puller


async def test_without_a_manager_wecoms_callback_for_an_account_not_served_is_answered_success(
    corp: Corp, hosted: Host, caplog: pytest.LogCaptureFixture
) -> None:
    puppet = await started(hosted)  # direct mode: WeCom is the caller
    caplog.set_level(logging.INFO, logger="puppets.routes")
    (in_its_corp,) = [c for n, c in enumerate(callbacks(corp, 2)) if n % 2]
    async with httpx.AsyncClient(trust_env=False, base_url=puppet.url) as http:
        for _ in range(30):  # WeCom's retries, or more accounts of the app
            answer = await http.post(f"/callback?{in_its_corp[0]}", content=in_its_corp[1])
            assert (answer.status_code, answer.text) == (200, "success")
    lines = [r for r in caplog.records if r.name == "puppets.routes"]
    assert 1 <= len(lines) <= LIMITER.burst, len(lines)  # before: one INFO line per callback
    assert "wkNOBODY1" in lines[0].getMessage()  # signed by WeCom: the operator learns which account


async def test_behind_a_node_manager_a_delivery_for_an_account_not_served_is_answered_as_before(
    corp: Corp, hosted: Host
) -> None:
    # A Node wxkf-manager keeps nothing it could not deliver, so a 404 would save no event, and its
    # fire-and-forget forward of a decrypted callback throws on a non-2xx: it gets what the Node
    # puppet answers. The puppet knows the manager is a Node one when a registration brought no secret.
    puppet = await started(hosted, manager=UNREACHABLE_MANAGER)
    puppet.account.set_webhook_secret(None)  # registered; a Node manager issues no secret
    (in_its_corp,) = [c for n, c in enumerate(callbacks(corp, 2)) if n % 2]
    async with httpx.AsyncClient(trust_env=False, base_url=puppet.url) as http:
        decrypted = await http.post("/callback/decrypted", json={"token": "t", "openKfId": "wkNOBODY"})
        raw = await http.post(f"/callback?{in_its_corp[0]}", content=in_its_corp[1])
    assert (decrypted.status_code, decrypted.text) == (200, "roger")
    assert (raw.status_code, raw.text) == (200, "success")
