# ruff: noqa: F811 - test_inhub's fixtures are imported by name and then requested by name
"""``wxkf up --puppets``'s stop order: its puppets finish the running handler, then deregister, while the
hub still answers; what arrives meanwhile stays in the hub's manager and is answered after a restart."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from tests.puppets.conftest import Corp, wait_until
from tests.puppets.test_inhub import READY, HubProcess, hub_env, manager_view  # noqa: F401 - fixture
from tests.puppets.test_lifecycle import NO_SAFETY_NET
from tests.support.services import free_port


async def test_wxkf_up_lets_its_puppets_finish_the_running_handler_before_they_deregister(
    corp: Corp, hub_env: dict[str, str], tmp_path: Path
) -> None:
    journal, release = tmp_path / "journal", tmp_path / "release"
    os.mkfifo(release)
    config = tmp_path / "puppets.toml"
    config.write_text(
        corp.config_toml(3000, bot="tests.puppets.lifecycle_bots:held", safety_pull_interval=NO_SAFETY_NET)
    )
    env = {**hub_env, "PUPPET_TEST_JOURNAL": str(journal), "PUPPET_TEST_RELEASE": str(release)}
    hub = HubProcess(["--puppets", str(config)], env, tmp_path / "hub.log", free_port())
    try:
        await hub.start(READY)
        await corp.set_callback(f"{hub.url}/callback/{corp.corpid}")
        await corp.says("hold on")

        async def started() -> bool:
            return journal.exists() and "start hold on" in journal.read_text()

        async def logged(text: str) -> bool:
            return text in hub.log()

        await wait_until(started, what="the handler to start")
        assert hub.process is not None
        hub.process.send_signal(signal.SIGTERM)
        await wait_until(lambda: logged("stopping:"), what="the stop to begin")
        assert (await manager_view(hub, corp))["registered"] is True
        await corp.says("during the drain")  # the hub stores it; its puppet refuses the delivery: 503
        await wait_until(lambda: logged("refused: stopping"), what="the delivery refused while stopping")
        assert (await manager_view(hub, corp))["registered"] is True
        await asyncio.to_thread(release.write_text, "go")
        assert await asyncio.to_thread(hub.process.wait, 60) == 0
        assert await corp.received() == ["echo: hold on"]
        assert journal.read_text().splitlines() == ["start hold on", "replied hold on"]
        log = hub.log()
        assert log.index("refused: stopping") < log.index("deregistered")
        await hub.start(READY)
        assert await corp.wait_received(2) == ["echo: hold on", "echo: during the drain"]
    finally:
        hub.stop()
