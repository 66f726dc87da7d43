"""Everything the simulator knows, in memory: configuration, clock, and each platform's world.

Only WeCom exists today; Feishu and DingTalk will sit next to it as ``state.feishu`` and
``state.dingtalk``, each in its own subpackage with the same split (rules here, routes beside them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from simulator.clock import Clock
from simulator.config import SimConfig
from simulator.wecom.schemas import SeedIn
from simulator.wecom.world import WeCom


class SeedError(ValueError):
    """The seed file is unreadable, not JSON, or does not match the seed schema (one-line message)."""


def read_seed(seed: Path | dict[str, Any]) -> SeedIn:
    if isinstance(seed, Path):
        try:
            data = json.loads(seed.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SeedError(f"seed {seed}: {exc}") from None
    else:
        data = seed
    try:
        return SeedIn.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "seed"
        raise SeedError(f"seed: {where}: {first['msg']}") from None


class SimState:
    def __init__(self, config: SimConfig | None = None, clock: Clock = time.time) -> None:
        self.config = config or SimConfig()
        self.clock = clock
        self.wecom = WeCom(self.config, clock)

    @classmethod
    def from_seed(cls, seed: Path | dict[str, Any], clock: Clock = time.time) -> SimState:
        """A state configured and populated from a seed (a JSON file or the same as a dict)."""
        spec = read_seed(seed)
        try:
            config = SimConfig.model_validate(spec.config or {})
        except ValidationError as exc:
            first = exc.errors()[0]
            raise SeedError(f"seed: config.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        state = cls(config, clock)
        state.populate(spec)
        return state

    def load(self, seed: Path | dict[str, Any]) -> None:
        """Add a seed's corps and robots to this state; its ``config`` must be absent."""
        spec = read_seed(seed)
        if spec.config:
            raise SeedError("seed: config can only be applied to a new state (SimState.from_seed)")
        self.populate(spec)

    def populate(self, spec: SeedIn) -> None:
        try:
            for corp in spec.corps:
                self.wecom.add_corp(corp)
            for robot in spec.robots:
                self.wecom.add_robot(robot)
        except (ValueError, LookupError) as exc:
            raise SeedError(f"seed: {exc}") from None
