# ruff: noqa: F811 - the puppets' fixtures are imported by name and then requested by name
"""``GET /callback`` of a puppet that is WeCom's direct callback target for several apps (two corps): the
request names no corp, so the app is picked by its signature; bad parameters are refused, with a
reason and a warning, before any crypto runs; a forgery decrypts nothing. And while the puppet stops,
the route answers ``503 stopping``, which the manager's probe reads as "gone"."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from puppets.account import AccountSpec
from puppets.bot import Bot
from puppets.config import PuppetConfig
from puppets.host import PuppetHost
from simulator.state import SimState
from tests.puppets.conftest import Corp, corp, sim, sim_config  # noqa: F401 - fixtures
from tests.support.corp import corp_spec, create_corp
from tests.support.servers import serve_app
from wecom.crypto import MsgCrypt
from wxkf.database import Database


@pytest.fixture
async def two_corps_direct(
    db: Database, sim: tuple[str, SimState], corp: Corp
) -> AsyncIterator[tuple[PuppetHost, str, Corp]]:
    """One puppet process serving ``corp`` and a second corp, with no manager; the second corp's app
    has WeCom's callback URL pointed at it. Yields the host, its URL and the second corp."""
    made = await create_corp(corp.http, corp.sim_url, corp_spec([{"open_kfid": "wkOTHER", "name": "Other"}]))
    other = Corp(corp.sim_url, corp.http, made.corpid, made.secret, made.token, made.aes_key, "wkOTHER")
    specs = [AccountSpec(c.corpid, c.secret, c.token, c.aes_key, open_kfid=c.kf) for c in (corp, other)]
    async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
        host = PuppetHost(PuppetConfig(accounts=specs), Bot(), db, http, sim[0] + "/cgi-bin")
        async with serve_app(host.app()) as url:
            await host.start()
            try:
                yield host, url, other
            finally:
                await host.stop()


async def test_url_verification_picks_the_app_by_its_signature_and_refuses_bad_input_before_crypto(
    two_corps_direct: tuple[PuppetHost, str, Corp],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, url, other = two_corps_direct
    await other.set_callback(url + "/callback")
    verified = (await other.http.post(other.control("/apps/1000002/verify"))).json()
    assert verified["ok"] is True, verified  # the second app's, found without a corp in the request

    decryptions = 0
    decrypt = MsgCrypt.decrypt

    def counting(self: MsgCrypt, encrypt: str) -> bytes:
        nonlocal decryptions
        decryptions += 1
        return decrypt(self, encrypt)

    monkeypatch.setattr(MsgCrypt, "decrypt", counting)
    good = {"msg_signature": "a" * 40, "timestamp": "1700000000", "nonce": "12345", "echostr": "abc="}
    cases = {
        "missing_parameter": {k: v for k, v in good.items() if k != "echostr"},
        "bad_parameter": good | {"echostr": "A" * 30_000},  # N apps x 30 KB of SHA-1 before
        "bad_parameter ": good | {"msg_signature": "not-hex"},
        "bad_parameter  ": good | {"timestamp": "yesterday"},
        "bad_signature": good,  # well formed, signed by no app
    }
    caplog.set_level(logging.WARNING, logger="puppets.routes")
    async with httpx.AsyncClient() as http:
        for reason, params in cases.items():
            answer = await http.get(url + "/callback", params=params)
            assert 400 <= answer.status_code < 500, (reason, answer.status_code)
            assert answer.text == reason.strip(), (reason, answer.text)
    assert decryptions == 0  # nothing forged reached the AES key
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert "bad_parameter" in warned and "bad_signature" in warned
    assert other.token not in warned and other.aes_key not in warned


async def test_while_stopping_the_probe_route_answers_503_stopping(
    two_corps_direct: tuple[PuppetHost, str, Corp],
) -> None:
    host, url, _ = two_corps_direct
    async with httpx.AsyncClient() as http:
        assert (await http.get(url + "/callback")).status_code == 400  # alive: the probe's answer
        for account in host.accounts:
            await account.stop_pulling()
        answer = await http.get(url + "/callback")
    assert (answer.status_code, answer.text) == (503, "stopping")
