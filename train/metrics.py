"""The run's one metrics logger, owned by the trainer (torchtitan ``components/metrics.py``).

Everything that reports numbers or events calls it — the loop (steps, evaluations, skipped steps) and the monitors
(alarms) — instead of searching the callback list for a writer. Rank 0 writes ``RUN_DIR/metrics.jsonl`` (one JSON
object per record) and, unless ``log.wandb = "disabled"``, Weights & Biases (offline by default, no account needed);
other ranks get a logger that writes nothing. Metrics are a flat ``{name: float}`` dict with stable names
(``train/loss``, ``monitor/...``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hyperp.errors import ConfigError
from train.checkpoint import write_atomic
from train.config import RunConfig
from train.distributed import DistEnv
from train.errors import naming


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf literal
    return value


class _Wandb:
    """Weights & Biases, offline unless the user asks for online mode; never requires an account."""

    def __init__(self, cfg: RunConfig, run_dir: Path) -> None:
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self._run = wandb.init(project=cfg.log.wandb_project, name=cfg.name, dir=str(run_dir), mode=cfg.log.wandb,
                               config=cfg.to_dict(), resume="allow", id=f"{cfg.name}-{run_dir.resolve().name}")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._run.log(metrics, step=step)

    def close(self) -> None:
        self._run.finish()


def _wandb_wanted(mode: str) -> bool:
    """wandb is an optional extra (``pip install -e .[wandb]``; GPU machines often lack it): without it, offline mode
    is skipped with one warning (metrics.jsonl has every metric) and online mode is a ConfigError before training."""
    if mode == "disabled":
        return False
    if importlib.util.find_spec("wandb") is not None:
        return True
    hint = "pip install -e .[wandb], or set log.wandb='disabled'"
    if mode == "online":
        raise ConfigError(f"log.wandb='online' needs the wandb package, which is not installed ({hint})")
    warnings.warn(f"wandb is not installed: log.wandb='{mode}' skipped, metrics go to metrics.jsonl ({hint})", stacklevel=3)
    return False


class MetricsLogger:
    """``metrics.jsonl`` (every ``every`` steps, the last step, monitor steps, evaluations, events) + wandb.

    ``path=None`` logs nothing (ranks other than 0). On resume, :meth:`open` first drops the records past the resumed
    step, so the file reads as one uninterrupted run; after a rollback they are moved to ``metrics.abandoned.jsonl``
    (the diverged stretch, its alarms and skipped steps stay readable).
    """

    def __init__(self, path: Path | None, every: int, last_step: int, wandb: Callable[[], _Wandb] | None = None) -> None:
        self.path, self.every, self.last_step, self._wandb_factory = path, every, last_step, wandb
        self._fh: Any = None
        self._wandb: _Wandb | None = None

    @classmethod
    def for_run(cls, cfg: RunConfig, run_dir: Path, env: DistEnv) -> MetricsLogger:
        if not env.is_main:
            return cls(None, cfg.train.log_every, cfg.train.max_steps)
        wandb = (lambda: _Wandb(cfg, Path(run_dir))) if _wandb_wanted(cfg.log.wandb) else None
        return cls(Path(run_dir) / "metrics.jsonl", cfg.train.log_every, cfg.train.max_steps, wandb)

    def open(self, resumed_step: int, keep_dropped: bool = False) -> None:
        if self.path is None:
            return
        self._truncate_after(resumed_step, self.path.with_name("metrics.abandoned.jsonl") if keep_dropped else None)
        self._fh = open(self.path, "a", buffering=1)
        if self._wandb_factory is not None:
            self._wandb = self._wandb_factory()

    def _truncate_after(self, step: int, dropped_to: Path | None) -> None:
        if not self.path.exists():
            return
        kept, dropped = [], []
        for line in self.path.read_text().splitlines():
            try:
                (kept if json.loads(line).get("step", 0) <= step else dropped).append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        if dropped and dropped_to is not None:  # appended before the rewrite: a kill in between duplicates, never loses
            with open(dropped_to, "a") as fh:
                fh.write("".join(line + "\n" for line in dropped))
        write_atomic(self.path, "".join(line + "\n" for line in kept).encode())  # a kill mid-rewrite loses nothing

    def event(self, record: dict[str, Any]) -> None:
        """A record that is not a step's metrics (``{"step", "event": "alarm" | "nonfinite_skip", …}``)."""
        if self.path is None:
            return
        if self._fh is None:  # an event before open(): a step run outside fit()
            self._fh = open(self.path, "a", buffering=1)
        with naming(self.path):  # a full disk names the file
            self._fh.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        if step % self.every == 0 or step == self.last_step or any(k.startswith("monitor/") for k in metrics):
            self.event({"step": step, "time": time.time(), **metrics})
        if self._wandb is not None:
            self._wandb.log(step, metrics)

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.event({"step": step, "time": time.time(), **metrics})
        if self._wandb is not None:
            self._wandb.log(step, metrics)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._wandb is not None:
            self._wandb.close()
            self._wandb = None
