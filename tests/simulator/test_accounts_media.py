"""kf accounts, contact links, and temporary media."""

from __future__ import annotations

from typing import Any

import pytest

from simulator import SimConfig
from simulator.wecom import errcodes as E
from tests.simulator.conftest import FAST, Acme, Sim

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@pytest.fixture
def config() -> SimConfig:
    # small limits, so the size checks are tested without uploading megabytes
    return FAST.model_copy(update={"media_max_size": {"image": 64, "voice": 32, "video": 64, "file": 128}})


async def upload(sim: Sim, acme: Acme, type: str, content: bytes, filename: str = "a.png") -> dict[str, Any]:
    response = await sim.http.post(
        "/cgi-bin/media/upload",
        params={"access_token": await sim.token(acme.app), "type": type},
        files={"media": (filename, content, "application/octet-stream")},
    )
    payload: dict[str, Any] = response.json()
    return payload


async def test_upload_and_download(sim: Sim, acme: Acme) -> None:
    uploaded = await upload(sim, acme, "image", PNG)
    assert uploaded["errcode"] == 0 and uploaded["type"] == "image"
    assert isinstance(uploaded["created_at"], str) and uploaded["created_at"] == str(int(sim.clock()))
    response = await sim.http.get(
        "/cgi-bin/media/get",
        params={"access_token": await sim.token(acme.app), "media_id": uploaded["media_id"]},
    )
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"
    assert 'filename="a.png"' in response.headers["content-disposition"]


@pytest.mark.parametrize(
    ("type", "size", "code"),
    [
        ("image", 4, E.INVALID_FILE_SIZE),
        ("image", 5, 0),
        ("image", 64, 0),
        ("image", 65, E.INVALID_IMAGE_SIZE),
        ("video", 65, E.INVALID_VIDEO_SIZE),
        ("voice", 33, E.INVALID_FILE_SIZE),
        ("file", 128, 0),
        ("file", 129, E.INVALID_FILE_SIZE),
        ("sticker", 10, E.INVALID_MEDIA_TYPE),
    ],
)
async def test_upload_limits(sim: Sim, acme: Acme, type: str, size: int, code: int) -> None:
    assert (await upload(sim, acme, type, b"x" * size, "f.bin"))["errcode"] == code


async def test_upload_needs_the_media_field(sim: Sim, acme: Acme) -> None:
    response = await sim.http.post(
        "/cgi-bin/media/upload",
        params={"access_token": await sim.token(acme.app), "type": "file"},
        files={"file": ("a.txt", b"hello world", "text/plain")},
    )
    assert response.json()["errcode"] == E.EMPTY_MEDIA


async def test_media_expires_after_three_days_and_stays_in_its_corp(sim: Sim, acme: Acme) -> None:
    media_id = (await upload(sim, acme, "file", b"hello world", "a.txt"))["media_id"]
    other = sim.state.wecom.directory.add_app(sim.state.wecom.directory.add_corp())

    async def get(app_token: str) -> int:
        response = await sim.http.get(
            "/cgi-bin/media/get", params={"access_token": app_token, "media_id": media_id}
        )
        return 0 if response.headers["content-type"].startswith("text/plain") else response.json()["errcode"]

    assert await get(await sim.token(acme.app)) == 0
    assert await get(await sim.token(other)) == E.INVALID_MEDIA_ID
    sim.clock.advance(3 * 24 * 3600 + 1)
    assert await get(await sim.token(acme.app)) == E.INVALID_MEDIA_ID


async def test_accounts_lifecycle_and_manage_privilege(sim: Sim, acme: Acme) -> None:
    sim.state.wecom.directory.add_account(acme.corp, "Not ours", managed_by=[])
    avatar = (await upload(sim, acme, "image", PNG))["media_id"]
    added = await sim.call(acme.app, "kf/account/add", {"name": "Sales", "media_id": avatar})
    assert added["errcode"] == 0
    listed = await sim.call(acme.app, "kf/account/list", {"offset": 0, "limit": 100})
    assert [(a["name"], a["manage_privilege"]) for a in listed["account_list"]] == [
        ("Support", True),
        ("Not ours", False),
        ("Sales", True),
    ]
    page = await sim.call(acme.app, "kf/account/list", {"offset": 1, "limit": 1})
    assert [a["name"] for a in page["account_list"]] == ["Not ours"]

    update = {"open_kfid": added["open_kfid"], "name": "Sales team"}
    assert (await sim.call(acme.app, "kf/account/update", update))["errcode"] == 0
    assert (await sim.call(acme.app, "kf/account/del", {"open_kfid": added["open_kfid"]}))["errcode"] == 0
    assert (await sim.call(acme.app, "kf/account/del", {"open_kfid": added["open_kfid"]}))["errcode"] == (
        E.OPEN_KFID_NOT_FOUND
    )
    listed = await sim.call(acme.app, "kf/account/list", {})
    assert [a["name"] for a in listed["account_list"]] == ["Support", "Not ours"]


async def test_account_errors(sim: Sim, acme: Acme) -> None:
    unmanaged = sim.state.wecom.directory.add_account(acme.corp, "Not ours", managed_by=[])
    avatar = (await upload(sim, acme, "image", PNG))["media_id"]
    cases = [
        ("kf/account/add", {"name": "x" * 17, "media_id": avatar}, E.INVALID_ACCOUNT_NAME),
        ("kf/account/add", {"name": "Sales"}, E.MISSING_MEDIA_ID),
        ("kf/account/add", {"name": "Sales", "media_id": "nope"}, E.INVALID_MEDIA_ID),
        ("kf/account/del", {"open_kfid": unmanaged.open_kfid}, E.INVALID_OPEN_KFID),
        ("kf/account/update", {"open_kfid": unmanaged.open_kfid, "name": "Mine"}, E.INVALID_OPEN_KFID),
        ("kf/account/list", {"limit": 101}, E.INVALID_PARAMETER),
        ("kf/add_contact_way", {"open_kfid": acme.open_kfid, "scene": "bad scene!"}, E.INVALID_PARAMETER),
        ("kf/customer/batchget", {"external_userid_list": []}, E.INVALID_PARAMETER),
    ]
    for api, body, code in cases:
        assert (await sim.call(acme.app, api, body))["errcode"] == code, (api, body)


async def test_contact_way(sim: Sim, acme: Acme) -> None:
    payload = await sim.call(
        acme.app, "kf/add_contact_way", {"open_kfid": acme.open_kfid, "scene": "spring_2026"}
    )
    assert payload["url"].startswith("https://work.weixin.qq.com/kfid/") and "spring_2026" in payload["url"]


async def test_unknown_apis_say_so(sim: Sim) -> None:
    response = await sim.http.post("/cgi-bin/kf/servicer/frobnicate", json={})
    assert response.status_code == 404 and "does not implement" in response.json()["errmsg"]


async def test_a_malformed_upload_is_an_errcode(sim: Sim, acme: Acme) -> None:
    response = await sim.http.post(
        "/cgi-bin/media/upload",
        params={"access_token": await sim.token(acme.app), "type": "file"},
        content=b"--xyz\r\nContent-Disposition: form-data; name=media; filename=a\r\n\r\nhello",
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert response.status_code == 200 and response.json()["errcode"] == E.EMPTY_MEDIA
