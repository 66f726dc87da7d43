"""Attacks on what the hub believes about a caller's address.

Two decisions rest on the TCP peer's address: ``WXKF_GATEWAY_NETWORKS`` (who may forward events
that the manager then delivers signed with the puppet's own secret) and the token service's budget
of upstream ``gettoken`` calls per caller. Neither may be talked into another address by a header.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.services import ServiceProcess, free_port, service_env
from wxkf.settings import Settings

CORP = "wwattackcorp000001"


async def test_an_x_forwarded_for_header_does_not_put_a_local_caller_inside_the_gateway_networks(
    settings: Settings, tmp_path: Path
) -> None:
    env = service_env(settings, tmp_path / "data", wxkf_gateway_networks="10.0.0.0/8")
    manager = ServiceProcess("manager", env, tmp_path / "manager.log", free_port())
    await manager.start()
    try:
        async with httpx.AsyncClient(base_url=manager.url) as http:
            forged = await http.post(
                f"/callback/decrypted/{CORP}",
                headers={"x-forwarded-for": "10.0.0.7"},
                json={"token": "forged-sync-token", "openKfId": "wkATTACK"},
            )
    finally:
        manager.stop()
    # the caller is 127.0.0.1, outside 10.0.0.0/8, whatever the header says
    assert forged.status_code == 403, forged.text
    assert forged.text.startswith("gateway_address:")


async def test_rotating_x_forwarded_for_does_not_buy_more_gettoken_calls(
    settings: Settings, tmp_path: Path
) -> None:
    # WeCom is unreachable (a closed port): every call for a new pair is charged, then fails with -1
    env = service_env(settings, tmp_path / "data", wecom_api_base=f"http://127.0.0.1:{free_port()}/cgi-bin")
    tokens = ServiceProcess("token-service", env, tmp_path / "tokens.log", free_port())
    await tokens.start()
    try:
        async with httpx.AsyncClient(base_url=tokens.url) as http:
            codes = []
            for n in range(15):  # a new corpid and secret each time: neither the corp nor a refusal repeats
                answer = await http.get(
                    "/cgi-bin/gettoken",
                    params={"corpid": f"wwrandom{n:04d}", "corpsecret": f"secret-{n}"},
                    headers={"x-forwarded-for": f"203.0.113.{n + 1}"},
                )
                codes.append(answer.json()["errcode"])
    finally:
        tokens.stop()
    # one caller (127.0.0.1): its burst of 10 upstream calls, then WeCom's "too many calls"
    assert codes == [-1] * 10 + [45009] * 5
