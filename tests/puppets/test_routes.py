"""The puppet's callback routes as WeCom's direct target: URL verification, and bad input refused."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from puppets import Bot, Image, TextMessage
from simulator.state import SimState
from tests.puppets.conftest import Corp, Hosted, wait_until
from tests.support.wecom_callbacks import CorpAppKeys, kf_event_xml, signed_post

Host = Callable[..., Awaitable[Hosted]]


async def test_wecom_url_verification_succeeds(corp: Corp, hosted: Host) -> None:
    await hosted(Bot())
    result = (await corp.http.post(corp.control("/apps/1000002/verify"))).json()
    assert result["ok"] is True, result


async def test_bad_callbacks_get_a_4xx_with_a_reason_and_change_nothing(corp: Corp, hosted: Host) -> None:
    puppet = await hosted(Bot(), callback=False)
    await asyncio.wait_for(puppet.account.puller.caught_up.wait(), 10)  # the start-up pull
    pulls = puppet.account.puller.pulls
    keys = CorpAppKeys(corp.corpid, corp.token, corp.aes_key)
    query, xml = signed_post(keys, kf_event_xml(corp.corpid, corp.kf, "tok"))
    wrong = CorpAppKeys(corp.corpid, "not-the-token", corp.aes_key)
    bad_query, bad_xml = signed_post(wrong, kf_event_xml(corp.corpid, corp.kf, "tok"))
    url = puppet.url + "/callback"
    async with httpx.AsyncClient() as http:
        cases = {
            "missing_parameter": await http.post(url, content=xml),
            "bad_signature": await http.post(f"{url}?{bad_query}", content=bad_xml),
            "xml_doctype": await http.post(f"{url}?{query}", content=b'<!DOCTYPE x [<!ENTITY a "b">]><xml/>'),
            "too_large": await http.post(f"{url}?{query}", content=b"x" * 100_000),
            "no_manager": await http.post(url + "/decrypted", json={"token": "t", "openKfId": corp.kf}),
        }
        echo = await http.get(
            url, params={"msg_signature": "0" * 40, "timestamp": "1", "nonce": "n", "echostr": "e"}
        )
    for reason, answer in cases.items():
        assert 400 <= answer.status_code < 500 and answer.text == reason, (
            reason,
            answer.text,
        )
    assert echo.status_code == 403
    assert puppet.account.puller.pulls == pulls


async def test_media_replies_upload_once_per_content(corp: Corp, hosted: Host, tmp_path: Path) -> None:
    bot = Bot()
    picture = b"\x89PNG\r\n\x1a\n" + b"pixels" * 100
    (tmp_path / "logo.png").write_bytes(picture)

    @bot.on_text
    async def send_picture(message: TextMessage) -> None:
        # the same content once as bytes, once from a file: one upload
        source = picture if message.text == "one" else tmp_path / "logo.png"
        await message.reply(Image(source, filename="logo.png"))

    puppet = await hosted(bot)
    await corp.says("one", wait=True)
    await corp.says("two", wait=True)

    async def two_images() -> list[str]:
        response = await corp.http.get(corp.control(f"/customers/{corp.customer}/received"))
        found = [m["image"]["media_id"] for m in response.json()["messages"] if m["msgtype"] == "image"]
        return found if len(found) == 2 else []

    first, second = await wait_until(two_images, what="two images")
    assert first == second
    assert await puppet.host.store.media.count_documents({}) == 1


async def test_a_node_manager_that_issues_no_secret_may_deliver_unsigned(
    corp: Corp, hosted: Host, sim: tuple[str, SimState]
) -> None:
    """The Node manager signs nothing and returns no webhookSecret: its deliveries are accepted, as the
    Node puppet accepts them (here the manager is unreachable, so tokens come from WeCom's gettoken
    instead of the manager's getToken, and the Node manager's answer to the registration, with no
    secret, is given to the account as :class:`~puppets.manager_link.ManagerLink` gives it)."""
    bot = Bot()
    texts: list[str] = []

    @bot.on_text
    async def note(message: TextMessage) -> None:
        texts.append(message.text)

    puppet = await hosted(bot, callback=False, manager="http://127.0.0.1:9")
    await asyncio.wait_for(puppet.account.puller.caught_up.wait(), 10)
    puppet.account.set_webhook_secret(None)  # registered; a Node manager issues no secret
    await corp.says("via the node manager")
    state = sim[1]
    wecom_corp = state.wecom.directory.corp(corp.corpid)
    token = state.wecom.kf.issue_msg_token(wecom_corp, wecom_corp.accounts[corp.kf])
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            puppet.url + "/callback/decrypted", json={"token": token, "openKfId": corp.kf}
        )
    assert answer.status_code == 200 and answer.text == "roger"
    await wait_until(lambda: _nonempty(texts), what="the message")
    assert texts == ["via the node manager"]


async def _nonempty(items: list[str]) -> bool:
    return bool(items)


async def test_a_sender_that_hangs_up_mid_body_is_no_error(
    corp: Corp, hosted: Host, caplog: pytest.LogCaptureFixture
) -> None:
    """WeCom gives up after 5 s and retries: a callback cut off mid-body is logged, not a 500 traceback."""
    caplog.set_level(logging.INFO)
    puppet = await hosted(Bot(), callback=False)
    host, port = puppet.url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /callback?msg_signature=a&timestamp=1&nonce=n HTTP/1.1\r\nHost: x\r\n")
    writer.write(b"Content-Length: 1000\r\n\r\n<xml>")
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await wait_until(lambda: _logged(caplog, "disconnected before its body"), what="the disconnect")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)
