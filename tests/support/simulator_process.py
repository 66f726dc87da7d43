"""The WeCom simulator as a real child process (``python -m simulator --seed``), for crash tests.

It outlives the hub and the puppets the test kills, keeps what it was seeded with, and is read and
driven only over its control API (``/sim/...``), as a developer would.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, ClassVar

from simulator import SimConfig
from tests.support.services import ServiceProcess


class SimulatorProcess(ServiceProcess):
    """``python -m simulator --port PORT --seed FILE``, the seed holding ``config`` and ``corps``."""

    ready_path: ClassVar[str] = "/sim/state"

    def __init__(self, config: SimConfig, corps: list[dict[str, Any]], directory: Path, port: int) -> None:
        super().__init__("simulator", {}, directory / "simulator.log", port)
        self.seed = directory / "simulator-seed.json"
        self.seed.write_text(json.dumps({"config": config.model_dump(mode="json"), "corps": corps}))

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "simulator", "--port", str(self.port), "--seed", str(self.seed)]
