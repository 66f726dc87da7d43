"""The hub on its own supervised embedded database, as ``wxkf up`` runs it, while that database fails:
liveness and readiness say what is true, and every route answers a 503 with a reason within the
operation deadline instead of hanging or answering 500.

The failures are real: the SecantusDB child is SIGSTOPped (hung) or SIGKILLed through its pid.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from hub.up import Hub
from tests.support.processes import stopped
from tests.support.servers import serve_app
from tests.support.wecom_callbacks import CorpAppKeys, kf_event_xml, signed_post
from wxkf import health
from wxkf.database import EmbeddedMongo
from wxkf.runtime import Runtime, open_runtime
from wxkf.settings import load_settings

ADMIN = "admin-token-for-health-tests"
DB_TIMEOUT = 1.0
# Generous bounds for a loaded CI machine: each only has to tell "answered" from "hung".
ANSWER_TIMEOUT = 20.0
CONDITION_TIMEOUT = 60.0


@dataclass
class LiveHub:
    runtime: Runtime
    http: httpx.AsyncClient
    keys: CorpAppKeys

    @property
    def embedded(self) -> EmbeddedMongo:
        assert self.runtime.database.embedded is not None
        return self.runtime.database.embedded

    @property
    def database_pid(self) -> int:
        pid = self.embedded.pid
        assert pid is not None
        return pid

    async def callback(self) -> httpx.Response:
        query, body = signed_post(
            self.keys, kf_event_xml(self.keys.corp_id, "wkACCOUNT", secrets.token_hex(4))
        )
        return await self.http.post(f"/callback/{self.keys.corp_id}?{query}", content=body)


@pytest.fixture
async def live_hub(tmp_path: Path) -> AsyncIterator[LiveHub]:
    settings = load_settings(
        mongo_uri=None,
        wxkf_data_dir=tmp_path / "data",
        wxkf_db_timeout=DB_TIMEOUT,
        wxkf_admin_token=ADMIN,
        wxkf_secret_key=base64.b64encode(secrets.token_bytes(32)).decode(),
    )
    async with open_runtime(settings) as runtime:
        hub = Hub(runtime)
        await hub.start()
        app = hub.app()
        health.install(app, runtime.database)
        try:
            async with (
                serve_app(app) as url,
                httpx.AsyncClient(base_url=url, timeout=ANSWER_TIMEOUT) as http,
            ):
                keys = CorpAppKeys.random()
                added = await http.post(
                    "/admin/apps",
                    json={"corp_id": keys.corp_id, "token": keys.token, "encoding_aes_key": keys.aes_key},
                    headers={"authorization": f"Bearer {ADMIN}"},
                )
                assert added.status_code == 201, added.text
                yield LiveHub(runtime, http, keys)
        finally:
            await hub.stop()


async def until(hub: LiveHub, path: str, accept: object) -> httpx.Response:
    """GET ``path`` until ``accept(response)`` holds (bounded by ``CONDITION_TIMEOUT``)."""
    deadline = time.monotonic() + CONDITION_TIMEOUT
    while True:
        response = await hub.http.get(path)
        if accept(response):  # type: ignore[operator]
            return response
        assert time.monotonic() < deadline, f"{path} still answers {response.status_code} {response.text}"
        await asyncio.sleep(0.1)  # the poll's interval; the condition above is what is waited for


async def test_ready_and_live_when_the_database_serves(live_hub: LiveHub) -> None:
    ready = await live_hub.http.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    live = await live_hub.http.get("/healthz")
    assert (live.status_code, live.json()) == (200, {"status": "ok", "database": "ok"})
    assert (await live_hub.callback()).text == "success"


async def test_a_hung_database_gives_503s_with_reasons_not_hangs_or_500s(live_hub: LiveHub) -> None:
    """SIGSTOP: every route that needs the database answers 503 once its deadline passes; readiness
    fails; liveness stays 200 (the process is repairing itself) but no longer says all is well."""
    with stopped(live_hub.database_pid):
        callback = await live_hub.callback()
        assert callback.status_code == 503, callback.text  # WeCom retries; nothing was acknowledged

        admin = await live_hub.http.get("/admin/apps", headers={"authorization": f"Bearer {ADMIN}"})
        assert admin.status_code == 503
        assert admin.json()["error"] == "database unavailable, retry later"
        assert admin.headers["retry-after"]

        for path in ("/cgi-bin/gettoken", "/puppetWxkfManager/getToken"):
            token = await live_hub.http.get(path, params={"corpid": "wwnew", "corpsecret": "s3cret"})
            assert token.status_code == 503, (path, token.text)
            assert token.json()["errcode"] == health.WECOM_SYSTEM_BUSY
            assert "s3cret" not in token.text

        ready = await live_hub.http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "unready"

        live = await until(live_hub, "/healthz", lambda r: r.json()["status"] != "ok")
        assert live.status_code == 200
        assert live.json()["status"] == "degraded"
        assert "embedded database" in live.json()["database"]


async def test_callbacks_succeed_again_after_the_database_is_killed(live_hub: LiveHub) -> None:
    """SIGKILL under traffic: the supervisor restarts the server on its port; callbacks answered
    meanwhile are 503 (not acknowledged), then ``success`` again with no restart of the hub."""
    killed = live_hub.database_pid
    assert (await live_hub.callback()).text == "success"
    os.kill(killed, signal.SIGKILL)
    statuses = set()
    deadline = time.monotonic() + CONDITION_TIMEOUT
    while True:
        response = await live_hub.callback()
        statuses.add(response.status_code)
        if response.status_code == 200:
            break
        assert response.status_code == 503, response.text
        assert time.monotonic() < deadline, "callbacks never succeeded again"
    assert response.text == "success"
    assert live_hub.embedded.pid != killed
    await until(live_hub, "/readyz", lambda r: r.status_code == 200)
    assert statuses <= {200, 503}


async def test_readiness_probes_are_shared_not_multiplied(live_hub: LiveHub) -> None:
    """Anyone may call /readyz: calls within READY_CACHE share one database read."""
    readiness = health.Readiness(live_hub.runtime.database)
    reads = 0
    probe = readiness._probe

    async def counted() -> str | None:
        nonlocal reads
        reads += 1
        return await probe()

    readiness._probe = counted  # type: ignore[method-assign]
    answers = await asyncio.gather(*(readiness.problem() for _ in range(50)))
    assert answers == [None] * 50
    assert reads == 1


async def test_liveness_fails_once_the_database_cannot_come_back(live_hub: LiveHub, tmp_path: Path) -> None:
    """The one state in which restarting the process is the answer: its embedded database could not
    be restarted (``wxkf up`` then exits 1; the route says so until it has)."""
    embedded = live_hub.embedded
    embedded.restart_delays = (0.05, 0.05)
    storage = tmp_path / "data" / "db"
    storage.rename(storage.with_name("db.moved"))
    storage.write_text("not a directory")
    os.kill(live_hub.database_pid, signal.SIGKILL)
    assert embedded.failure is not None
    await asyncio.wait_for(asyncio.shield(embedded.failure), CONDITION_TIMEOUT)
    live = await live_hub.http.get("/healthz")
    assert live.status_code == 503
    assert live.json()["status"] == "failing"
    assert live.json()["database"].startswith("embedded database could not be restarted")
    assert (await live_hub.http.get("/readyz")).status_code == 503
