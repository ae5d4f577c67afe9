"""Pluggable callbacks: everything that watches a run (progress, logs, wandb, checkpoints, monitors, alarms).

The loop calls ``on_train_start``, ``on_step_end`` after every optimizer step, ``on_eval`` after validation and
``on_train_end``; callbacks read the trainer and may ask it to stop with ``trainer.request_stop(reason)``.
Metrics arrive as a flat ``{name: float}`` dict with stable names (``train/loss``, ``monitor/...``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyperp.errors import ConfigError

if TYPE_CHECKING:
    from train.loop import Trainer


class Callback:
    """Base class: every hook is optional."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_step_start(self, trainer: Trainer, step: int) -> None:
        """Before the forward passes of optimizer step ``step`` (1-based: the step about to complete)."""

    def on_before_optimizer_step(self, trainer: Trainer, step: int) -> dict[str, float]:
        """Gradients are final (clipped) and finite; return metrics to log with this step (e.g. grad norms)."""
        return {}

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None: ...

    def on_eval(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf literal
    return value


class JSONLLogger(Callback):
    """Appends one JSON object per logged step to ``RUN_DIR/metrics.jsonl`` (and events to the same file).

    On resume, records past the resumed step are dropped first so the file reads as one uninterrupted run.
    """

    def __init__(self, path: Path, every: int) -> None:
        self.path, self.every = Path(path), every
        self._fh: Any = None

    def on_train_start(self, trainer: Trainer) -> None:
        self._truncate_after(trainer.state.step)
        self._fh = open(self.path, "a", buffering=1)

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        from train.checkpoint import write_atomic  # a kill during the rewrite must not lose the log

        write_atomic(self.path, "".join(line + "\n" for line in kept).encode())

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            self._fh = open(self.path, "a", buffering=1)
        self._fh.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if step % self.every == 0 or step == trainer.cfg.train.max_steps or any(k.startswith("monitor/") for k in metrics):
            self.write({"step": step, "time": time.time(), **metrics})

    def on_eval(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self.write({"step": step, "time": time.time(), **metrics})

    def on_train_end(self, trainer: Trainer) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class ProgressBar(Callback):
    """A tqdm bar showing loss, lr and tokens/s; falls back to plain lines when stdout is not a terminal."""

    def __init__(self, every: int) -> None:
        self.every = every
        self._bar: Any = None
        self._last_eval = float("nan")

    def on_train_start(self, trainer: Trainer) -> None:
        from tqdm import tqdm

        total = trainer.cfg.train.max_steps
        self._bar = tqdm(total=total, initial=trainer.state.step, desc=trainer.cfg.name, dynamic_ncols=True,
                         disable=not sys.stdout.isatty(), file=sys.stdout)

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self._bar.update(1)
        if step % self.every and step != trainer.cfg.train.max_steps:
            return
        text = (f"loss {metrics['train/loss']:.4f} lr {metrics['train/lr']:.2e} "
                f"tok/s {metrics['train/tokens_per_s']:,.0f}")
        if "moe/aux_loss" in metrics:
            text += f" aux {metrics['moe/aux_loss']:.3f}"
        if self._bar.disable:
            print(f"step {step:>6}/{trainer.cfg.train.max_steps} {text} val {self._last_eval:.4f}", flush=True)
        else:
            self._bar.set_postfix_str(text + f" val {self._last_eval:.4f}")

    def on_eval(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self._last_eval = metrics["val/loss"]

    def on_train_end(self, trainer: Trainer) -> None:
        if self._bar is not None:
            self._bar.close()


class WandbLogger(Callback):
    """Weights & Biases, offline unless the user asks for online mode; never requires an account.

    wandb is an optional extra (``pip install -e .[wandb]``; GPU machines often lack it): without it, offline mode
    is skipped with one warning (metrics.jsonl has every metric) and online mode is a ConfigError before training.
    """

    def __init__(self, mode: str, project: str, run_dir: Path) -> None:
        self.mode, self.project, self.run_dir = mode, project, Path(run_dir)
        self._run: Any = None
        self.enabled = importlib.util.find_spec("wandb") is not None
        if not self.enabled:
            hint = "pip install -e .[wandb], or set log.wandb='disabled'"
            if mode == "online":
                raise ConfigError(f"log.wandb='online' needs the wandb package, which is not installed ({hint})")
            warnings.warn(f"wandb is not installed: log.wandb='{mode}' skipped, metrics go to metrics.jsonl ({hint})",
                          stacklevel=2)

    def on_train_start(self, trainer: Trainer) -> None:
        if not self.enabled:
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self._run = wandb.init(project=self.project, name=trainer.cfg.name, dir=str(self.run_dir),
                               mode=self.mode, config=trainer.cfg.to_dict(), resume="allow",
                               id=f"{trainer.cfg.name}-{self.run_dir.resolve().name}")

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if self._run is not None:
            self._run.log(metrics, step=step)

    def on_eval(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self.on_step_end(trainer, step, metrics)

    def on_train_end(self, trainer: Trainer) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


class PeriodicCheckpoint(Callback):
    """Saves every ``every`` steps and at the end of training."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if step % self.every == 0 or step == trainer.cfg.train.max_steps:
            trainer.save_checkpoint()
