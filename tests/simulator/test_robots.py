"""Group robots: webhook/send limits, uploads, rate limit, removal, and what they recorded."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from simulator import SimConfig
from simulator.wecom import errcodes as E
from tests.simulator.conftest import FAST, Sim


@pytest.fixture
def config() -> SimConfig:
    return FAST.model_copy(update={"robot_image_max": 1024})


@pytest.fixture
async def robot(sim: Sim) -> str:
    created = await sim.control("POST", "/robots", {"name": "alerts"}, status=201)
    assert created["webhook_url"] == f"{sim.url}/cgi-bin/webhook/send?key={created['key']}"
    key: str = created["key"]
    return key


async def post(sim: Sim, key: str, message: dict[str, Any]) -> int:
    response = await sim.http.post("/cgi-bin/webhook/send", params={"key": key}, json=message)
    code: int = response.json()["errcode"]
    return code


def image(raw: bytes, md5: str | None = None) -> dict[str, Any]:
    body = {"base64": base64.b64encode(raw).decode(), "md5": md5 or hashlib.md5(raw).hexdigest()}
    return {"msgtype": "image", "image": body}


def news(count: int) -> dict[str, Any]:
    return {
        "msgtype": "news",
        "news": {"articles": [{"title": f"t{i}", "url": "https://x"} for i in range(count)]},
    }


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"msgtype": "text", "text": {"content": "x" * 2048, "mentioned_list": ["@all"]}}, 0),
        ({"msgtype": "text", "text": {"content": "x" * 2049}}, E.INVALID_PARAMETER),
        ({"msgtype": "markdown", "markdown": {"content": "#" * 4096}}, 0),
        ({"msgtype": "markdown", "markdown": {"content": "#" * 4097}}, E.INVALID_PARAMETER),
        (image(b"\x89PNG" * 256), 0),
        (image(b"\x89PNG" * 257), E.INVALID_IMAGE_SIZE),
        (image(b"\x89PNG", md5="0" * 32), E.MEDIA_MD5_MISMATCH),
        (news(1), 0),
        (news(8), 0),
        (news(0), E.NEWS_ARTICLE_COUNT),
        (news(9), E.NEWS_ARTICLE_COUNT),
        ({"msgtype": "file", "file": {"media_id": "nope"}}, E.INVALID_MEDIA_ID),
        ({"msgtype": "gif", "gif": {}}, E.INVALID_MSGTYPE),
    ],
)
async def test_message_limits(sim: Sim, robot: str, message: dict[str, Any], code: int) -> None:
    assert await post(sim, robot, message) == code


async def test_accepted_messages_are_recorded(sim: Sim, robot: str) -> None:
    assert await post(sim, robot, {"msgtype": "text", "text": {"content": "deploy done"}}) == 0
    assert await post(sim, robot, {"msgtype": "text", "text": {"content": ""}}) == E.EMPTY_CONTENT
    recorded = await sim.control("GET", f"/robots/{robot}/messages")
    assert [(m["msgtype"], m["text"]["content"]) for m in recorded["messages"]] == [("text", "deploy done")]


async def test_file_messages_use_the_robots_own_uploads(sim: Sim, robot: str) -> None:
    response = await sim.http.post(
        "/cgi-bin/webhook/upload_media",
        params={"key": robot, "type": "file"},
        files={"media": ("report.csv", b"a,b\n1,2\n", "text/csv")},
    )
    uploaded = response.json()
    assert uploaded["errcode"] == 0 and isinstance(uploaded["created_at"], str)
    assert await post(sim, robot, {"msgtype": "file", "file": {"media_id": uploaded["media_id"]}}) == 0


async def test_unknown_and_removed_robots(sim: Sim, robot: str) -> None:
    assert await post(
        sim, "00000000-0000-0000-0000-000000000000", {"msgtype": "text", "text": {"content": "x"}}
    ) == (E.ROBOT_REMOVED)
    await sim.control("DELETE", f"/robots/{robot}")
    assert await post(sim, robot, {"msgtype": "text", "text": {"content": "x"}}) == E.ROBOT_REMOVED


async def test_twenty_messages_a_minute_per_robot(sim: Sim, robot: str) -> None:
    message = {"msgtype": "text", "text": {"content": "tick"}}
    codes = [await post(sim, robot, message) for _ in range(21)]
    assert codes == [0] * 20 + [E.RATE_LIMITED]
    other = (await sim.control("POST", "/robots", {}))["key"]
    assert await post(sim, other, message) == 0
    sim.clock.advance(60)
    assert await post(sim, robot, message) == 0
