"""The ``wxkf`` command line: help, version, bad environments, the serving commands, and the admin
commands against a real hub on a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner, Result

from hub.cli import SIM_PORT, app
from hub.up import Hub
from tests.support.processes import is_running
from tests.support.servers import serve_app
from wxkf.runtime import ADMIN_TOKEN_FILE, open_runtime
from wxkf.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def test_help_lists_subcommands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "sim" in result.output


def test_sim_help_lists_options() -> None:
    result = runner.invoke(app, ["sim", "--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--seed"):
        assert option in result.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("wxkf-hub ")


def test_bad_setting_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "eighty")
    result = runner.invoke(app, ["sim"])
    assert result.exit_code == 2
    assert result.stderr.startswith("wxkf: PORT: ")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.output


def test_python_m_wxkf_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hub", "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "sim" in done.stdout


# -- serving subcommands -------------------------------------------------------------------------

SERVICES = ["up", "manager", "gateway", "token-service"]


def test_help_lists_every_subcommand() -> None:
    result = runner.invoke(app, ["--help"])
    for command in [*SERVICES, "sim", "corp", "replay"]:
        assert command in result.output


@pytest.mark.parametrize("command", SERVICES)
def test_services_refuse_bad_settings_in_one_line(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WXKF_RETRY_SCHEDULE", "soon")
    result = runner.invoke(app, [command])
    assert result.exit_code == 2
    assert result.stderr.startswith("wxkf: WXKF_RETRY_SCHEDULE: ")
    assert result.stderr.count("\n") == 1


async def test_up_serves_the_admin_api_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """The real command in embedded mode: its generated admin token is what the CLI finds, and SIGTERM
    shuts it down in order (exit status 0, embedded database stopped) rather than killing it."""
    data_dir = tmp_path / "data"
    env = {**os.environ, "WXKF_DATA_DIR": str(data_dir), "HOST": "0.0.0.0", "PORT": "8080"}
    for name in ("MONGO_URI", "WXKF_ADMIN_TOKEN", "WXKF_SECRET_KEY"):
        env.pop(name, None)
    args = ["-m", "hub", "up", "--host", "127.0.0.1", "--port", "0"]  # the options win over HOST, PORT
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=PROJECT_ROOT, env=env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    try:
        base_url = await wait_for_listening(proc.stderr)
        assert base_url.startswith("http://127.0.0.1:")
        assert not base_url.endswith(":8080")
        database_pids = children_of(proc.pid)
        assert database_pids, "the embedded database should run as a child of wxkf up"

        listing = await wxkf("corp", "list", "--server", base_url, env={"WXKF_DATA_DIR": str(data_dir)})
        assert listing.exit_code == 0, listing.stderr
        assert listing.stdout == "no corp apps\n"

        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(STOP_TIMEOUT):
            log = (await proc.stderr.read()).decode()
            assert await proc.wait() == 0, log
        assert "Traceback" not in log
        assert not any(is_running(pid) for pid in database_pids)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def wait_for_listening(stderr: asyncio.StreamReader) -> str:
    """The base URL from uvicorn's "running on" line (it reports the real port when PORT=0)."""
    async with asyncio.timeout(START_TIMEOUT):
        while line := (await stderr.readline()).decode():
            if found := re.search(r"Uvicorn running on (http://\S+)", line):
                return found.group(1)
    raise AssertionError("wxkf up exited before it listened")


def children_of(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


class UpProcess:
    """``wxkf up`` as a real process on an embedded database, with its stderr read as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._grew = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, data_dir: Path) -> UpProcess:
        """``wxkf up`` on an embedded database restarted three times at most, quickly (the attempts
        are tested here, not production's 20 s of pacing)."""
        env = {
            **os.environ,
            "WXKF_DATA_DIR": str(data_dir),
            "PORT": "0",
            "WXKF_DB_RESTART_DELAYS": "0.05,0.05,0.05",
        }
        for name in ("MONGO_URI", "WXKF_ADMIN_TOKEN", "WXKF_SECRET_KEY"):
            env.pop(name, None)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hub", "up", cwd=PROJECT_ROOT, env=env, stderr=asyncio.subprocess.PIPE
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := (await self.proc.stderr.readline()).decode():
            async with self._grew:
                self.lines.append(line)
                self._grew.notify_all()
        async with self._grew:
            self._grew.notify_all()

    async def wait_for_line(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """The first line (from the start) matching ``pattern``; fails if the process ends first."""
        async with asyncio.timeout(timeout), self._grew:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if found := re.search(pattern, line):
                        return found
                seen = len(self.lines)
                if self._reader.done():
                    raise AssertionError(f"wxkf up ended without {pattern!r}:\n{self.log}")
                await self._grew.wait()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def database_pid(self) -> int:
        (pid,) = children_of(self.proc.pid)
        return pid

    async def exit_status(self, timeout: float = STOP_TIMEOUT) -> int:
        async with asyncio.timeout(timeout):
            status = await self.proc.wait()
            await self._reader
        return status

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        await self._reader


@pytest.fixture
async def up_process(tmp_path: Path) -> AsyncIterator[UpProcess]:
    process = await UpProcess.start(tmp_path / "data")
    try:
        yield process
    finally:
        await process.close()


async def test_up_says_what_to_do_next(up_process: UpProcess, tmp_path: Path) -> None:
    url = (await up_process.wait_for_line(r"Uvicorn running on (http://\S+)")).group(1)
    await up_process.wait_for_line(r"wxkf-hub is up on " + re.escape(url))
    for hint in (
        r"WeCom callback URL: +https://<this host's public address>/callback/<CORP_ID>",
        r"add a corp app: +wxkf corp add <CORP_ID> --token <TOKEN> --aes-key <AES_KEY> --secret-stdin"
        + re.escape(f" --server {url}"),
        r"admin token: +" + re.escape(str(tmp_path / "data" / ADMIN_TOKEN_FILE)),
        rf"wxkf sim +\(port {SIM_PORT}\)",
    ):
        await up_process.wait_for_line(hint)


async def test_up_restarts_its_killed_database_and_says_so(up_process: UpProcess) -> None:
    """kill -9 of the embedded database: the hub logs it at once, restarts it, serves again, and a
    SIGTERM still stops it cleanly."""
    url = (await up_process.wait_for_line(r"Uvicorn running on (http://\S+)")).group(1)
    killed = up_process.database_pid()
    os.kill(killed, signal.SIGKILL)
    await up_process.wait_for_line(
        rf"ERROR wxkf\.database: embedded SecantusDB \(pid {killed}\) exited \(killed by SIGKILL\)"
    )
    await up_process.wait_for_line(r"WARNING wxkf\.database: embedded SecantusDB is back")
    assert up_process.database_pid() != killed
    async with httpx.AsyncClient(base_url=url, timeout=STOP_TIMEOUT) as http:
        deadline = time.monotonic() + START_TIMEOUT
        while (ready := await http.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, ready.text
            await asyncio.sleep(0.1)  # the poll's interval; readiness is what is waited for
    up_process.proc.send_signal(signal.SIGTERM)
    assert await up_process.exit_status() == 0, up_process.log


async def test_up_stops_in_bounded_time_with_a_hung_database(up_process: UpProcess) -> None:
    """SIGTERM while the database is SIGSTOPped: every service's stop is cut off at its deadline, the
    database is killed, and the process exits 0 (it used to wait on the database forever)."""
    await up_process.wait_for_line(r"Uvicorn running on")
    hung = up_process.database_pid()
    os.kill(hung, signal.SIGSTOP)
    try:
        up_process.proc.send_signal(signal.SIGTERM)
        assert await up_process.exit_status(timeout=30.0) == 0, up_process.log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGCONT)
    assert not is_running(hung)


async def test_up_exits_1_when_its_database_cannot_come_back(up_process: UpProcess, tmp_path: Path) -> None:
    """Restarts fail (the storage path is no longer a directory): after its attempts the hub gives up
    and exits non-zero with the reason, so a process supervisor restarts it."""
    await up_process.wait_for_line(r"Uvicorn running on")
    storage = tmp_path / "data" / "db"
    storage.rename(storage.with_name("db.moved"))
    storage.write_text("not a directory")
    os.kill(up_process.database_pid(), signal.SIGKILL)
    assert await up_process.exit_status(timeout=60.0) == 1, up_process.log
    assert "wxkf: embedded database could not be restarted (3 attempts)" in up_process.log
    assert "CRITICAL wxkf.database" in up_process.log
    assert "Traceback" not in up_process.log, up_process.log


def test_sim_has_a_port_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """`wxkf sim` next to `wxkf up`: it does not take PORT (the hub's) but a default of its own."""
    import simulator

    bound: list[tuple[str, int]] = []
    monkeypatch.setattr(simulator, "serve", lambda host, port, seed: bound.append((host, port)))
    assert runner.invoke(app, ["sim"], env={"PORT": "8080", "HOST": "127.0.0.1"}).exit_code == 0
    assert runner.invoke(app, ["sim", "--port", "9999"], env={"PORT": "8080"}).exit_code == 0
    assert bound == [("127.0.0.1", SIM_PORT), ("127.0.0.1", 9999)]
    assert SIM_PORT != 8080
    assert f"[default: {SIM_PORT}]" in runner.invoke(app, ["sim", "--help"]).output


# -- admin commands against a real hub -----------------------------------------------------------

ADMIN_TOKEN = "admin-token-for-tests"
CORP = "wwcorp0001"
TOKEN = "callbackToken123"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
SECRET = "corp-app-secret-987"


@dataclass
class RunningHub:
    hub: Hub
    url: str


@pytest.fixture
async def running_hub(settings: Settings) -> AsyncIterator[RunningHub]:
    """The whole hub, as ``wxkf up`` composes it, on a real socket."""
    settings = settings.model_copy(update={"wxkf_admin_token": SecretStr(ADMIN_TOKEN)})
    async with open_runtime(settings) as runtime:
        hub = Hub(runtime)
        await hub.start()
        try:
            async with serve_app(hub.app()) as url:
                yield RunningHub(hub, url)
        finally:
            await hub.stop()


async def wxkf(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
    """Run the CLI in a thread (it makes blocking HTTP calls to a server on this event loop).

    ``env`` is all the CLI sees of the variables it reads (default: just the admin token).
    """
    environment: dict[str, str | None] = dict.fromkeys(("WXKF_ADMIN_TOKEN", "PORT", "WXKF_DATA_DIR"))
    environment.update({"WXKF_ADMIN_TOKEN": ADMIN_TOKEN} if env is None else env)
    return await asyncio.to_thread(runner.invoke, app, list(args), env=environment, input=input)


def add_corp_app(
    url: str, *extra: str, aes_key: str = AES_KEY, input: str | None = None
) -> Awaitable[Result]:
    args = ("corp", "add", CORP, "--token", TOKEN, "--aes-key", aes_key, "--server", url, *extra)
    return wxkf(*args, input=input)


async def test_corp_add_list_rm(running_hub: RunningHub) -> None:
    url = running_hub.url
    added = await add_corp_app(url, "--secret-stdin", input=f"{SECRET}\n")
    assert added.exit_code == 0, added.stderr
    assert f"added {CORP}/default (the corp's default app, secret: yes)" in added.stdout
    assert f"/callback/{CORP}\n" in added.stdout

    listed = await wxkf("corp", "list", "--server", url)
    assert listed.exit_code == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["CORP", "ID", "NAME", "DEFAULT", "SECRET", "CALLBACK", "PATH", "CREATED"]
    assert row.split()[:5] == [CORP, "default", "yes", "yes", f"/callback/{CORP}"]
    for secret in (TOKEN, AES_KEY, SECRET):
        assert secret not in added.output + listed.output

    removed = await wxkf("corp", "rm", CORP, "--server", url)
    assert removed.exit_code == 0, removed.stderr
    assert removed.stdout == f"removed {CORP}/default\n"
    assert (await wxkf("corp", "list", "--server", url)).stdout == "no corp apps\n"


async def test_corp_rm_without_a_name_refuses_to_guess(running_hub: RunningHub) -> None:
    url = running_hub.url
    assert (await add_corp_app(url)).exit_code == 0
    assert (await add_corp_app(url, "--name", "sales", "--no-default")).exit_code == 0

    ambiguous = await wxkf("corp", "rm", CORP, "--server", url)
    assert ambiguous.exit_code == 1
    assert ambiguous.stderr == f"wxkf: {CORP} has 2 apps (default, sales); name the one to remove\n"

    assert (await wxkf("corp", "rm", CORP, "sales", "--server", url)).exit_code == 0
    listed = await wxkf("corp", "list", "--corp", CORP, "--server", url)
    assert [line.split()[1] for line in listed.stdout.splitlines()[1:]] == ["default"]


async def test_corp_add_reports_the_servers_reason(running_hub: RunningHub) -> None:
    result = await wxkf(
        "corp", "add", CORP, "--token", TOKEN, "--aes-key", "short", "--server", running_hub.url
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("wxkf: encoding_aes_key: ")
    assert result.stderr.endswith("(400)\n")
    assert result.stderr.count("\n") == 1


async def test_secret_and_secret_stdin_are_exclusive() -> None:
    result = await add_corp_app("http://127.0.0.1:1", "--secret", SECRET, "--secret-stdin", input="other\n")
    assert result.exit_code == 2
    assert "not both" in result.stderr


async def test_wrong_admin_token_is_refused(running_hub: RunningHub) -> None:
    result = await wxkf("corp", "list", "--server", running_hub.url, env={"WXKF_ADMIN_TOKEN": "wrong"})
    assert result.exit_code == 1
    assert result.stderr.startswith("wxkf: admin token refused (401")
    assert result.stderr.count("\n") == 1


async def test_admin_token_is_read_from_the_data_dir(running_hub: RunningHub, tmp_path: Path) -> None:
    (tmp_path / ADMIN_TOKEN_FILE).write_text(ADMIN_TOKEN + "\n")
    result = await wxkf("corp", "list", "--server", running_hub.url, env={"WXKF_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.stderr


async def test_missing_admin_token_is_explained_not_created(tmp_path: Path) -> None:
    result = await wxkf("corp", "list", env={"WXKF_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 1
    assert result.stderr.startswith("wxkf: no admin token: set WXKF_ADMIN_TOKEN")
    assert not (tmp_path / ADMIN_TOKEN_FILE).exists()


async def test_unreachable_server_is_one_line() -> None:
    with socket.socket() as closed:  # bound but not listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        result = await wxkf("corp", "list", "--server", f"http://127.0.0.1:{port}")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"wxkf: cannot reach http://127.0.0.1:{port} ")
    assert result.stderr.count("\n") == 1


async def test_default_server_is_localhost_on_port(running_hub: RunningHub) -> None:
    port = running_hub.url.rpartition(":")[2]
    result = await wxkf("corp", "list", env={"PORT": port, "WXKF_ADMIN_TOKEN": ADMIN_TOKEN})
    assert result.exit_code == 0, result.stderr


async def test_replay_an_event_and_an_account_since(running_hub: RunningHub) -> None:
    url = running_hub.url
    manager = running_hub.hub.manager
    assert manager is not None
    before = datetime.now(UTC) - timedelta(minutes=1)
    await manager.accept_decrypted(CORP, "wkACCOUNT1", "sync-token-1", "event-1")
    await manager.accept_decrypted(CORP, "wkACCOUNT1", "sync-token-2", "event-2")

    one = await wxkf("replay", "--event", "event-1", "--server", url)
    assert one.exit_code == 0, one.stderr
    assert one.stdout.startswith(f"replaying 1 event(s) of {CORP}/wkACCOUNT1: delivering event-1")

    since = before.astimezone().replace(tzinfo=None).isoformat()  # local time without an offset
    both = await wxkf("replay", "--account", f"{CORP}/wkACCOUNT1", "--since", since, "--server", url)
    assert both.exit_code == 0, both.stderr
    assert both.stdout.startswith(f"replaying 2 event(s) of {CORP}/wkACCOUNT1: delivering event-2")

    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    none = await wxkf("replay", "--account", f"{CORP}/wkACCOUNT1", "--since", later, "--server", url)
    assert none.exit_code == 1
    assert none.stderr == "wxkf: no events for that account since then (404)\n"


async def test_replay_unknown_event(running_hub: RunningHub) -> None:
    result = await wxkf("replay", "--event", "no-such-event", "--server", running_hub.url)
    assert result.exit_code == 1
    assert result.stderr == "wxkf: no such event (404)\n"


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--event", "e1", "--account", "ww/kf", "--since", "2025-01-01"],
        ["--account", "ww/kf"],
        ["--account", "no-slash", "--since", "2025-01-01"],
        ["--account", "ww/kf", "--since", "yesterday"],
    ],
)
def test_replay_needs_exactly_one_well_formed_selection(args: list[str]) -> None:
    result = runner.invoke(app, ["replay", *args], env={"WXKF_ADMIN_TOKEN": ADMIN_TOKEN})
    assert result.exit_code == 2
