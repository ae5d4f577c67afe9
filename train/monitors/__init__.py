"""Stability monitors (SPEC §5): collectors, alarms and their callbacks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from train.monitors.config import MonitorConfig

if TYPE_CHECKING:
    from train.callbacks import Callback


def monitor_callbacks(cfg: MonitorConfig, run_dir: Path) -> list[Callback]:
    """The callbacks that collect monitors and raise alarms for a run (filled in by the monitors work)."""
    return []


__all__ = ["MonitorConfig", "monitor_callbacks"]
