"""SIGKILL between acknowledgement and forwarding loses nothing: the restarted gateway forwards it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.support.recorder import Recorder
from tests.support.services import ServiceProcess, free_port, service_env
from tests.support.wecom_callbacks import CorpAppKeys, kf_event_xml, signed_post
from wxkf.settings import Settings

ADMIN = "crash-test-admin"


async def test_sigkill_after_ack_loses_nothing(
    settings: Settings, listener: tuple[Recorder, str], keys: CorpAppKeys, tmp_path: Path
) -> None:
    recorder, manager_url = listener
    recorder.status = 503  # the manager is down: nothing can be forwarded before the kill
    env = service_env(
        settings,
        tmp_path / "data",
        wxkf_admin_token=ADMIN,
        wxkf_replica_id="gateway-crash-test",
        manager_endpoint=manager_url,
        wxkf_retry_schedule="10m",  # after the first failure, no retry before the kill
    )
    gateway = ServiceProcess("gateway", env, tmp_path / "gateway.log", free_port())
    await gateway.start()
    try:
        async with httpx.AsyncClient(base_url=gateway.url) as http:
            added = await http.post(
                "/admin/apps",
                headers={"authorization": f"Bearer {ADMIN}"},
                json={"corp_id": keys.corp_id, "token": keys.token, "encoding_aes_key": keys.aes_key},
            )
            assert added.status_code == 201, added.text
            for n in range(20):
                query, body = signed_post(keys, kf_event_xml(keys.corp_id, "wkCRASH", f"tok-{n}"))
                response = await http.post(f"/callback/{keys.corp_id}?{query}", content=body)
                assert response.status_code == 200
        gateway.kill()
        assert recorder.received == []
        recorder.status = 200
        await gateway.start()  # same replica id: recovers its own pending events at start
        received = await recorder.wait_for(20, timeout=30)
        tokens = sorted(json.loads(r["body"])["token"] for r in received)
        assert tokens == sorted(f"tok-{n}" for n in range(20))
    finally:
        gateway.stop()
