"""``wxkf puppet --transport``: a bad value, or ``ws`` without a manager, stops the start with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.puppets.conftest import REPO, Corp

KEYS = Corp("http://127.0.0.1:9", None, "wwcorp", "secret", "token", "a" * 43)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("transport", "message"),
    [
        ("carrier-pigeon", "--transport carrier-pigeon: expected http or ws"),
        ("ws", "--transport ws needs a manager"),
    ],
)
def test_a_bad_transport_is_one_clear_line(tmp_path: Path, transport: str, message: str) -> None:
    config = tmp_path / "puppets.toml"
    config.write_text(KEYS.config_toml(0))
    argv = ["--bot", "examples.echo:bot", "--config", str(config), "--transport", transport]
    finished = subprocess.run(
        [sys.executable, "-m", "hub", "puppet", *argv],
        env={**os.environ, "TEST_KF_SECRET": "secret"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 2, finished.stderr
    assert message in finished.stderr + finished.stdout
    assert "Traceback" not in finished.stderr
