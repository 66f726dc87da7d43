"""A bad configuration or bot stops ``wxkf puppet`` at start with one clear line and a non-zero status."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from puppets.config import ConfigError, load_env, load_file
from tests.puppets.conftest import REPO, Corp
from tests.support.services import free_port
from tests.support.wecom_callbacks import new_aes_key

GOOD_APP = f"""
[[apps]]
corp_id = "wwacme"
secret = {{ env = "ACME_SECRET" }}
token = "tok"
encoding_aes_key = "{new_aes_key()}"
accounts = ["wkA", {{ name = "Support" }}]
"""


async def run_puppet(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PUPPET_WXKF_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub", "puppet", *args,
        cwd=REPO, env={**clean, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        (GOOD_APP, {}, "apps[0].secret: environment variable ACME_SECRET is not set"),
        ("port = [", {}, "not valid TOML"),
        ("colour = 'blue'\n" + GOOD_APP, {"ACME_SECRET": "s"}, "colour: Extra inputs are not permitted"),
        (
            "port = 99999\n" + GOOD_APP,
            {"ACME_SECRET": "s"},
            "port: Input should be less than or equal to 65535",
        ),
        (GOOD_APP.replace('"tok"', '{ file = "/nonexistent/token" }'), {"ACME_SECRET": "s"}, "cannot read"),
        (
            GOOD_APP.replace('encoding_aes_key = "', 'encoding_aes_key = "x'),
            {"ACME_SECRET": "s"},
            "43 characters",
        ),
        ("manager = 'ftp://x'\n" + GOOD_APP, {"ACME_SECRET": "s"}, "manager: Value error, must be an http"),
        ("", {}, "apps: Field required"),
    ],
)
def test_bad_config_files_name_the_field(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    path = tmp_path / "puppets.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_file(path, env)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_a_good_file_reads_secrets_from_env_and_files(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-a-file\n")
    path = tmp_path / "puppets.toml"
    path.write_text(GOOD_APP.replace('"tok"', f'{{ file = "{tmp_path / "token"}" }}'))
    config = load_file(path, {"ACME_SECRET": "from-env"})
    assert [(a.open_kfid, a.name) for a in config.accounts] == [("wkA", ""), ("", "Support")]
    assert {a.corp_secret for a in config.accounts} == {"from-env"}
    assert {a.token for a in config.accounts} == {"from-a-file"}
    assert "from-env" not in repr(config)  # secrets stay out of logs


def test_the_node_puppets_variables_configure_one_account() -> None:
    env = {
        "PUPPET_WXKF_WECOM_APP_TOKEN": "tok",
        "PUPPET_WXKF_WECOM_APP_AES_KEY": new_aes_key(),
        "PUPPET_WXKF_WECOM_CORP_ID": "wwacme",
        "PUPPET_WXKF_WECOM_CORP_SECRET": "sec",
        "PUPPET_WXKF_WECOM_KF_NAME": "Support",
        "PUPPET_WXKF_CALLBACK_PORT": "3100",
        "PUPPET_WXKF_MANAGER_ENDPOINT": "http://127.0.0.1:7777/",
        "PUPPET_WXKF_SELF_ENDPOINT": "http://10.0.0.5:3100",
    }
    config = load_env(env)
    [account] = config.accounts
    assert (account.corp_id, account.name, account.corp_secret) == ("wwacme", "Support", "sec")
    assert (config.port, config.manager, config.endpoint) == (
        3100,
        "http://127.0.0.1:7777",
        "http://10.0.0.5:3100",
    )
    with pytest.raises(ConfigError, match="PUPPET_WXKF_WECOM_KF_OPEN_ID or PUPPET_WXKF_WECOM_KF_NAME"):
        load_env({k: v for k, v in env.items() if k != "PUPPET_WXKF_WECOM_KF_NAME"})
    with pytest.raises(ConfigError, match="PUPPET_WXKF_CALLBACK_PORT"):
        load_env({**env, "PUPPET_WXKF_CALLBACK_PORT": "http"})


async def test_the_command_stops_with_one_line_for_bad_config_and_bad_bots(tmp_path: Path) -> None:
    config = tmp_path / "puppets.toml"
    config.write_text(GOOD_APP)
    status, stderr = await run_puppet("--bot", "examples.echo:bot", "--config", str(config))
    assert status == 2
    assert one_line(stderr) == f"wxkf: {config}: apps[0].secret: environment variable ACME_SECRET is not set"
    status, stderr = await run_puppet("--bot", "examples.echo:bot")
    assert status == 2 and "PUPPET_WXKF_WECOM_CORP_ID is not set" in one_line(stderr)
    env = {"ACME_SECRET": "s"}
    for bot, reason in [
        ("examples.nothing:bot", "cannot import examples.nothing: ModuleNotFoundError"),
        ("examples.echo:robot", "examples.echo has no attribute 'robot'"),
        ("examples.echo:echo", "echo is a function, not a puppets.Bot"),
        ("examples.echo", "expected MODULE:ATTR"),
    ]:
        status, stderr = await run_puppet("--bot", bot, "--config", str(config), env=env)
        assert status == 2 and reason in one_line(stderr), stderr


async def test_an_account_the_app_cannot_serve_stops_the_start_with_one_line(
    corp: Corp, puppet_env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "puppets.toml"
    config.write_text(corp.config_toml(free_port()).replace(corp.kf, "wkNOBODY"))
    status, stderr = await run_puppet("--bot", "examples.echo:bot", "--config", str(config), env=puppet_env)
    assert status == 1
    assert one_line(stderr) == f"wxkf: {corp.corpid}/wkNOBODY: no such kf account for this corp app"


def test_tokens_come_from_access_token_url_else_the_manager_else_wecom() -> None:
    from puppets.config import PuppetConfig
    from puppets.host import token_source

    wecom = "https://qyapi.weixin.qq.com/cgi-bin"
    assert token_source(PuppetConfig(accounts=[]), wecom) == (wecom, "gettoken")
    with_manager = PuppetConfig(accounts=[], manager="http://hub:8080")
    assert token_source(with_manager, wecom) == ("http://hub:8080/puppetWxkfManager", "getToken")
    explicit = PuppetConfig(
        accounts=[], manager="http://hub:8080", token_url="http://tokens:9/cgi-bin/gettoken"
    )
    assert token_source(explicit, wecom) == ("http://tokens:9/cgi-bin", "gettoken")
