"""The callbacks of a run: the progress display and the monitors (the :class:`~train.loop.Callback` protocol is the
loop's). Metrics files and wandb are the trainer's :class:`~train.metrics.MetricsLogger`; checkpoints its
:class:`~train.checkpoint.Checkpointer`."""

from __future__ import annotations

import math
import time
from typing import Any

from train.config import RunConfig
from train.console import log_only, terminal
from train.distributed import DistEnv
from train.loop import Callback, Trainer
from train.monitors import monitor_callbacks

__all__ = ["Callback", "ProgressBar", "build_callbacks"]


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class ProgressBar(Callback):
    """A step line every ``every`` steps (loss, lr, tokens/s, elapsed and ETA, val once evaluated). On a terminal a
    live tqdm bar shows it and the line goes to ``console.log`` only; otherwise (batch jobs) the line is printed."""

    def __init__(self, every: int) -> None:
        self.every = every
        self._bar: Any = None
        self._started, self._first_step = 0.0, 0

    def on_train_start(self, trainer: Trainer) -> None:
        from tqdm import tqdm

        total = trainer.cfg.train.max_steps
        self._started, self._first_step = time.perf_counter(), trainer.state.step
        self._bar = tqdm(total=total, initial=trainer.state.step, desc=trainer.cfg.name, dynamic_ncols=True,
                         disable=not terminal().isatty(), file=terminal())

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self._bar.update(1)
        last = trainer.cfg.train.max_steps
        if step % self.every and step != last:
            return
        text = (f"loss {metrics['train/loss']:.4f} lr {metrics['train/lr']:.2e} "
                f"tok/s {metrics['train/tokens_per_s']:,.0f}")
        if "moe/aux_loss" in metrics:
            text += f" aux {metrics['moe/aux_loss']:.3f}"
        val = trainer.state.last_val_loss
        if not math.isnan(val):  # nothing to show before the first evaluation
            text += f" val {val:.4f}"
        elapsed = time.perf_counter() - self._started  # this invocation's steps: a resume restarts the clock
        eta = elapsed / max(1, step - self._first_step) * (last - step)
        line = f"step {step:>6}/{last} {text} elapsed {_clock(elapsed)} eta {_clock(eta)}"
        if self._bar.disable:
            print(line, flush=True)
        else:
            self._bar.set_postfix_str(text)
            log_only(line)

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
