"""``wxkf up --puppets puppets.toml``: the hub serving its own kf accounts in one process, on one database,
with the simulator as WeCom."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.puppets.conftest import REPO, Corp, PuppetProcess, wait_until
from tests.support.services import free_port, service_env
from wxkf.settings import Settings

READY = "puppet account(s)"


class HubProcess(PuppetProcess):
    """``python -m hub up --puppets FILE ...``; ready when the hub says its accounts are served."""

    def spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hub", "up", *self.args],
                env={**os.environ, **self.env, "HOST": "127.0.0.1", "PORT": str(self.port)},
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )


@pytest.fixture
def hub_env(settings: Settings, tmp_path: Path, puppet_env: dict[str, str]) -> dict[str, str]:
    return {
        **puppet_env,
        **service_env(settings, tmp_path / "hub", wxkf_token_invalidate_interval="0"),
    }


@pytest.fixture
async def make_hub(
    tmp_path: Path, hub_env: dict[str, str], corp: Corp
) -> AsyncIterator[Callable[..., HubProcess]]:
    made: list[HubProcess] = []

    def make(bot: str = "examples.echo:bot", **env: str) -> HubProcess:
        config = tmp_path / "puppets.toml"
        config.write_text(corp.config_toml(3000, bot=bot))  # port: a wxkf puppet key, ignored here
        hub = HubProcess(["--puppets", str(config)], {**hub_env, **env}, tmp_path / "hub.log", free_port())
        made.append(hub)
        return hub

    yield make
    for hub in made:
        hub.stop()


async def manager_view(hub: HubProcess, corp: Corp) -> dict[str, Any]:
    async with httpx.AsyncClient(trust_env=False) as http:
        response = await http.get(
            f"{hub.url}/puppetWxkfManager/puppetWxkfInfo/{corp.kf}",
            headers={"authorization": f"Bearer {corp.secret}"},
        )
    result: dict[str, Any] = response.json()
    return result


async def test_the_hub_answers_ding_with_its_own_puppets_through_its_manager(
    corp: Corp, make_hub: Callable[..., HubProcess]
) -> None:
    hub = make_hub()
    await hub.start(READY)
    assert "port ignored: the hub's own puppets use this hub" in hub.log()
    await corp.set_callback(f"{hub.url}/callback/{corp.corpid}")  # WeCom calls the hub's gateway
    await corp.says("ding")
    assert await corp.wait_received(1) == ["echo: ding"]
    # the manager sees an ordinary registered puppet, on a loopback listener of the hub's own process
    view = await manager_view(hub, corp)
    assert view["registered"] is True
    assert str(view["endpoint"]).startswith("http://127.0.0.1:")
    assert not str(view["endpoint"]).endswith(f":{hub.port}")


async def test_sigterm_lets_the_running_handler_finish_deregisters_and_exits_0(
    corp: Corp, make_hub: Callable[..., HubProcess], tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    hub = make_hub("tests.puppets.bots:slow", PUPPET_TEST_JOURNAL=str(journal), PUPPET_TEST_WORK="2")
    await hub.start(READY)
    await corp.set_callback(f"{hub.url}/callback/{corp.corpid}")
    await corp.says("slow")

    async def handler_running() -> bool:
        return journal.exists() and "start " in journal.read_text()

    await wait_until(handler_running, what="the handler to start")
    assert await hub.terminate() == 0
    assert journal.read_text().splitlines()[-1].endswith(" slow")  # "end <msgid> slow"
    assert journal.read_text().splitlines()[-1].startswith("end ")
    assert await corp.received() == ["got: slow", "done: slow"]
    log = hub.log()
    assert "deregistered" in log
    assert log.index("deregistered") > log.index("stopping: the puppets finish their running handlers")


def run_up(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub", "up", *args],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


BAD = 'port = 0\nbot = "examples.echo:bot"\n[[apps]]\ncorp_id = "ww1"\nsecret = "s"\n'


@pytest.mark.parametrize(
    ("config", "args", "says"),
    [
        (BAD, [], "apps[0].token: Field required"),
        (BAD + 'token = "t"\nencoding_aes_key = "short"\naccounts = ["wk"]\n', [], "encoding_aes_key"),
        (None, ["--bot", "no_such_module:bot"], "cannot import no_such_module"),
    ],
    ids=["missing-field", "bad-aes-key", "bot-does-not-import"],
)
def test_a_bad_puppets_file_or_bot_stops_wxkf_up_with_one_line_and_exit_2(
    tmp_path: Path, config: str | None, args: list[str], says: str
) -> None:
    path = tmp_path / "puppets.toml"
    path.write_text(config or 'secret = "x"\n')
    if config is None:  # a good file, a bot that does not import
        path.write_text(
            '[[apps]]\ncorp_id = "ww1"\nsecret = "s"\ntoken = "t"\n'
            f'encoding_aes_key = "{"a" * 43}"\naccounts = ["wk"]\n'
        )
    env = {"WXKF_DATA_DIR": str(tmp_path / "data"), "PORT": str(free_port()), "PYTHONPATH": str(REPO)}
    done = run_up(["--puppets", str(path), *args], env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("wxkf: ") and says in lines[0]
    assert not (tmp_path / "data").exists()  # nothing was opened


def test_a_file_without_a_bot_names_the_option(tmp_path: Path) -> None:
    path = tmp_path / "puppets.toml"
    path.write_text(
        f'[[apps]]\ncorp_id = "ww1"\nsecret = "s"\ntoken = "t"\nencoding_aes_key = "{"a" * 43}"\n'
        'accounts = ["wk"]\n'
    )
    done = run_up(["--puppets", str(path)], {"WXKF_DATA_DIR": str(tmp_path / "data")})
    assert done.returncode == 2
    assert "no bot: give --bot MODULE:ATTR" in done.stderr


def test_bot_without_puppets_is_refused_not_ignored(tmp_path: Path) -> None:
    done = run_up(["--bot", "examples.echo:bot"], {"WXKF_DATA_DIR": str(tmp_path / "data")})
    assert done.returncode == 2
    assert "--bot needs --puppets FILE" in done.stderr
    assert not (tmp_path / "data").exists()
