"""The ``wxkf`` command line: help, version, and how it reports a bad environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wxkf.cli import app

PROJECT_ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


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
        [sys.executable, "-m", "wxkf", "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "sim" in done.stdout
