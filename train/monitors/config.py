"""Settings of the stability monitors and alarms (SPEC §5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hyperp.errors import ConfigError


@dataclass
class MonitorConfig:
    every: int = 10  # collect monitors every N optimizer steps (0 disables them)
    on_alarm: Literal["warn", "stop"] = "warn"

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ConfigError(f"monitor.every={self.every} must be >= 0")
