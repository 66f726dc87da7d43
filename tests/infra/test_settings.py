"""A bad environment variable is reported by name, in one line."""

from __future__ import annotations

import pytest

from wxkf.database import RESTART_DELAYS
from wxkf.retry import parse_delays
from wxkf.settings import SettingsError, load_settings


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("MONGO_URI", "http://db"),
        ("WXKF_LOG_LEVEL", "LOUD"),
        ("WXKF_DB_RESTART_DELAYS", "1s,-2s"),
    ],
)
def test_error_names_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert message.startswith(f"{variable}: ")
    assert "\n" not in message


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("WXKF_LOG_LEVEL", "debug")
    settings = load_settings()
    assert settings.port == 9000
    assert settings.wxkf_log_level == "DEBUG"


def test_the_embedded_databases_restart_delays_default_to_the_supervisors_own() -> None:
    assert parse_delays(load_settings().wxkf_db_restart_delays) == RESTART_DELAYS
