"""``python -m simulator.listener``: the walkthrough's callback printer."""

from __future__ import annotations

import subprocess
import sys

from simulator.listener import create_listener
from tests.simulator.conftest import Acme, Sim
from tests.support.servers import serve_app


async def test_listener_prints_decrypted_callbacks_and_passes_url_verification(sim: Sim, acme: Acme) -> None:
    lines: list[str] = []
    async with serve_app(create_listener(acme.app.crypt(), lines.append)) as url:
        acme.app.callback_url = f"{url}/callback"
        verified = await sim.control("POST", f"/corps/{acme.corpid}/apps/{acme.app.agentid}/verify")
        await sim.customer_writes(acme)
    assert verified["ok"] is True
    assert lines[0].startswith("GET /callback: URL verification ok")
    assert "Event: kf_msg_or_event" in lines[1] and f"OpenKfId: {acme.open_kfid}" in lines[1]


async def test_listener_rejects_what_it_cannot_verify(sim: Sim, acme: Acme) -> None:
    lines: list[str] = []
    other_key = sim.state.wecom.directory.add_app(acme.corp, "other").crypt()
    async with serve_app(create_listener(other_key, lines.append)) as url:
        acme.app.callback_url = f"{url}/callback"
        [delivery] = (await sim.customer_writes(acme))["deliveries"]
    assert delivery["outcome"] == "failed" and {a["status"] for a in delivery["attempts"]} == {400}
    assert all("rejected (SignatureError" in line for line in lines)


def test_listener_refuses_a_bad_aes_key() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "simulator.listener", "--corpid", "ww1", "--token", "t", "--aes-key", "short"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "EncodingAESKey" in done.stderr
