"""The README's configuration table stays in step with :class:`wxkf.settings.Settings`."""

from __future__ import annotations

import re
from pathlib import Path

from wxkf.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_configuration_table_lists_exactly_the_settings() -> None:
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", README.read_text(), flags=re.MULTILINE))
    assert documented == {name.upper() for name in Settings.model_fields}
