"""Chaos: the embedded database of ``wxkf puppet`` and of ``wxkf up --puppets`` dies and cannot be
started again (its data dir is gone). ``wxkf up`` then exits 1 so a supervisor restarts it, and its
``/readyz`` and 503s say the database is the problem; both puppet commands kept running with a dead
database instead, answering callbacks they could not record (``wxkf up --puppets`` also served no
``/readyz`` at all, and a database error in a hub route was a 500)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.puppets.conftest import PuppetProcess, corp, make_puppet, puppet_env, sim, sim_config
from tests.puppets.test_inhub import READY, HubProcess, hub_env, make_hub

__all__ = ["corp", "hub_env", "make_hub", "make_puppet", "puppet_env", "sim", "sim_config"]

#: WXKF_DB_RESTART_DELAYS: three quick attempts in place of production's 20 s of them (each fails at once)
QUICK_RESTARTS = "0.05,0.05,0.05"
EXIT_TIMEOUT = 60.0  # the supervisor's restart attempts, then the orderly stop


def embedded_server(pid: int) -> int:
    """The pid of the SecantusDB child of process ``pid``."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for child in children:
        if "secantus" in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace"):
            return int(child)
    raise AssertionError(f"no embedded database server under pid {pid}: {children}")


def break_for_good(data_dir: Path, process: subprocess.Popen[bytes]) -> None:
    """Make every restart of the embedded server fail at once, then kill it."""
    (data_dir / "db").rename(data_dir / "db.moved")
    (data_dir / "db").write_text("not a directory")
    os.kill(embedded_server(process.pid), signal.SIGKILL)


async def exit_status(process: subprocess.Popen[bytes]) -> int | None:
    try:
        return await asyncio.to_thread(process.wait, EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None


async def test_wxkf_puppet_exits_1_when_its_embedded_database_is_lost_for_good(
    make_puppet: Callable[..., PuppetProcess], puppet_env: dict[str, str], tmp_path: Path
) -> None:
    del puppet_env["MONGO_URI"]  # the embedded server under data_dir
    puppet_env["WXKF_DB_RESTART_DELAYS"] = QUICK_RESTARTS
    data_dir = tmp_path / "puppet-data"
    puppet = make_puppet(data_dir=str(data_dir))
    await puppet.start()
    async with httpx.AsyncClient(trust_env=False) as http:
        ready = await http.get(f"{puppet.url}/readyz")
    assert ready.status_code == 200, ready.text  # before: 404
    assert puppet.process is not None
    break_for_good(data_dir, puppet.process)
    status = await exit_status(puppet.process)
    assert status == 1, f"status {status}:\n{puppet.log()[-2000:]}"  # before: still running
    assert "could not be restarted" in puppet.log()


async def test_wxkf_up_with_puppets_is_ready_and_exits_1_when_its_embedded_database_is_lost_for_good(
    make_hub: Callable[..., HubProcess], hub_env: dict[str, str], tmp_path: Path
) -> None:
    del hub_env["MONGO_URI"]
    hub_env["WXKF_DB_RESTART_DELAYS"] = QUICK_RESTARTS
    hub = make_hub()
    await hub.start(READY)
    async with httpx.AsyncClient(trust_env=False) as http:
        ready = await http.get(f"{hub.url}/readyz")
    assert ready.status_code == 200, ready.text  # before: 404, no readiness route at all
    assert hub.process is not None
    break_for_good(Path(hub_env["WXKF_DATA_DIR"]), hub.process)
    status = await exit_status(hub.process)
    assert status == 1, f"status {status}:\n{hub.log()[-2000:]}"  # before: still running
    assert "could not be restarted" in hub.log()
