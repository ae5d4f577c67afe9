"""The callbacks of a run: the progress display and the monitors (the :class:`~train.loop.Callback` protocol is the
loop's). Metrics files and wandb are the trainer's :class:`~train.metrics.MetricsLogger`; checkpoints its
:class:`~train.checkpoint.Checkpointer`."""

from __future__ import annotations

import math
import sys
from typing import Any

from train.config import RunConfig
from train.distributed import DistEnv
from train.loop import Callback, Trainer
from train.monitors import monitor_callbacks

__all__ = ["Callback", "ProgressBar", "build_callbacks"]


class ProgressBar(Callback):
    """A tqdm bar showing loss, lr and tokens/s; falls back to plain lines when stdout is not a terminal."""

    def __init__(self, every: int) -> None:
        self.every = every
        self._bar: Any = None

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
        val = trainer.state.last_val_loss
        if not math.isnan(val):  # nothing to show before the first evaluation
            text += f" val {val:.4f}"
        if self._bar.disable:
            print(f"step {step:>6}/{trainer.cfg.train.max_steps} {text}", flush=True)
        else:
            self._bar.set_postfix_str(text)

    def on_train_end(self, trainer: Trainer) -> None:
        if self._bar is not None:
            self._bar.close()


def build_callbacks(cfg: RunConfig, env: DistEnv = DistEnv()) -> list[Callback]:
    """Monitors first (they add their metrics to the step's dict before it is displayed and logged); only rank 0
    shows progress."""
    callbacks: list[Callback] = list(monitor_callbacks(cfg.monitor))
    if env.is_main and cfg.log.progress:
        callbacks.append(ProgressBar(cfg.train.log_every))
    return callbacks
