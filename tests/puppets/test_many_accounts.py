"""One ``wxkf puppet`` process serving accounts of two corps from ``puppets.toml``, without cross-talk."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import httpx

from simulator.state import SimState
from tests.puppets.conftest import Corp, PuppetProcess, wait_until
from tests.support.corp import corp_spec, create_corp
from tests.support.services import free_port


async def add_corp(http: httpx.AsyncClient, sim_url: str) -> dict[str, str]:
    # the same open_kfid as the first corp's account: the corp tells them apart
    return asdict(await create_corp(http, sim_url, corp_spec(customers=["wmBOB"])))


async def test_accounts_of_two_corps_in_one_process_each_answer_their_own_customers(
    corp: Corp, sim: tuple[str, SimState], puppet_env: dict[str, str], tmp_path: Path
) -> None:
    sales = await corp.http.post(corp.control("/accounts"), json={"open_kfid": "wkSALES", "name": "Sales"})
    assert sales.is_success, sales.text
    other = await add_corp(corp.http, sim[0])
    other_corp = Corp(
        corp.sim_url, corp.http, other["corpid"], other["secret"], other["token"], other["aes_key"]
    )
    (tmp_path / "other-secret").write_text(other["secret"])
    port = free_port()
    config = tmp_path / "puppets.toml"
    config.write_text(
        f"""
port = {port}

[[apps]]
corp_id = "{corp.corpid}"
secret = {{ env = "TEST_KF_SECRET" }}
token = "{corp.token}"
encoding_aes_key = "{corp.aes_key}"
accounts = ["wkSUPPORT", {{ name = "Sales" }}]

[[apps]]
corp_id = "{other["corpid"]}"
secret = {{ file = "{tmp_path / "other-secret"}" }}
token = "{other["token"]}"
encoding_aes_key = "{other["aes_key"]}"
accounts = ["wkSUPPORT"]
"""
    )
    puppet = PuppetProcess(
        ["--bot", "examples.echo:bot", "--config", str(config)], puppet_env, tmp_path / "puppet.log", port
    )
    try:
        await puppet.start()
        assert "(3 account(s))" in puppet.log()
        await corp.set_callback(puppet.url + "/callback")
        await other_corp.set_callback(puppet.url + "/callback")
        writes = [
            (corp, "wkSUPPORT", "to support"),
            (corp, "wkSALES", "to sales"),
            (other_corp, "wkSUPPORT", "elsewhere"),
        ]
        for where, kf, text in writes:
            response = await corp.http.post(
                where.control(f"/accounts/{kf}/messages"),
                json={"external_userid": "wmBOB", "msgtype": "text", "text": {"content": text}},
            )
            assert response.is_success, response.text

        async def replies(where: Corp, kf: str) -> list[str]:
            response = await corp.http.get(
                where.control("/customers/wmBOB/received"), params={"open_kfid": kf}
            )
            return [m["text"]["content"] for m in response.json()["messages"]]

        for where, kf, text in writes:
            assert await wait_until(lambda w=where, k=kf: replies(w, k), what=f"{kf} reply") == [
                f"echo: {text}"
            ]
    finally:
        puppet.stop()
