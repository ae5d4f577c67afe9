"""The training loop: one optimizer step = grad-accumulated forward/backward, a finite check, the step, callbacks.

The loop is generic: MoE balancing is a :class:`moe.balance.BalancePolicy` it calls, metrics and events go to the
:class:`~train.metrics.MetricsLogger` the trainer owns, and saving/resuming is the :class:`~train.checkpoint.Checkpointer`
over the trainer's Stateful objects (the trainer's counters among them). Whatever else watches the run (progress,
monitors, alarms) is a :class:`Callback`; how the pieces are built lives in :mod:`train.build`.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from train import distributed
from train.build import Components, uses_bf16
from train.checkpoint import Checkpointer, Resumed, RNGState
from train.config import RunConfig
from train.eval.validation import Validation
from train.metrics import MetricsLogger
from train.mfu import MFU
from train.schedule import schedule_factor, set_lr

_METRIC_NAMES = {"ce": "train/loss", "total": "train/total_loss", "aux": "moe/aux_loss", "z": "moe/z_loss"}


class Callback:
    """What watches a run; every hook is optional. Callbacks read the trainer and may ask it to stop with
    ``trainer.request_stop(reason)``; metrics arrive as the flat dict the logger writes (and may be extended)."""

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


class _CallbackStates:
    """The callbacks' states as one Stateful, by class name (callbacks added or removed since are fine)."""

    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = callbacks

    def state_dict(self) -> dict[str, Any]:
        return {type(cb).__name__: cb.state_dict() for cb in self.callbacks}

    def load_state_dict(self, states: dict[str, Any]) -> None:
        for cb in self.callbacks:
            if type(cb).__name__ in states:
                cb.load_state_dict(states[type(cb).__name__])


@dataclass
class TrainState:
    step: int = 0  # optimizer steps completed
    tokens: int = 0
    skipped_steps: int = 0
    nonfinite_streak: int = 0
    last_val_loss: float = math.nan  # the latest evaluation (nan before the first)


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path, parts: Components, callbacks: list[Callback]) -> None:
        self.cfg, self.run_dir, self.callbacks = cfg, Path(run_dir), callbacks
        self.model, self.optimizer, self.device = parts.model, parts.optimizer, parts.device
        self.sampler, self.balance, self.autocast = parts.sampler, parts.balance, parts.autocast
        self.dist, self.train_model = parts.dist, parts.train_model or parts.model  # train.distributed
        self.validation = Validation(parts.data, cfg, self.dist, self.device)  # val/loss, val/bpb, per source
        self.state = TrainState()
        self.stop_reason: str | None = None
        self.resumed: Resumed | None = None
        self.logger = MetricsLogger.for_run(cfg, self.run_dir, self.dist)
        self.mfu = MFU(self.model, cfg.data.seq_len, self.device, uses_bf16(cfg, self.device), self.dist.world_size)
        states = {"model": self.model, "optimizer": self.optimizer, "trainer": self,
                  "callbacks": _CallbackStates(callbacks), "rng": RNGState()}
        if self.balance is not None and self.balance.controller is not None:
            states["balance"] = self.balance  # moe.balance_target's controller (absent from older checkpoints)
        self.checkpointer = Checkpointer(self.run_dir, states, cfg.to_dict(), cfg.train.keep_checkpoints, self.dist,
                                         map_location=self.device, keep_pinned=cfg.train.keep_pinned)

    def request_stop(self, reason: str, roll_back: bool = False) -> None:
        """Stop after this step with a checkpoint. ``roll_back``: the run diverged, so that checkpoint sends a plain
        ``--resume`` to the rollback point (:meth:`mark_rollback`) instead of continuing the stopped state."""
        if self.stop_reason is None:
            self.stop_reason = reason
            if roll_back:
                window = max(self.cfg.monitor.spike_window, self.cfg.train.max_nonfinite)  # at least the streak
                self.checkpointer.roll_back_on_resume(self.state.step, window)

    def mark_rollback(self, step: int, why: str) -> int | None:
        """For alarms: pin the newest checkpoint older than the weights that produced step ``step``'s metrics as a
        rollback point; a divergence stop (``request_stop(…, roll_back=True)``) sends ``--resume`` to the earliest
        such point within ``monitor.spike_window`` steps (:func:`train.checkpoint.rollback_point`). Returns the pinned
        step, None when no checkpoint precedes it."""
        return self.checkpointer.pin_before(step, why)

    # The trainer is one of the checkpointed Stateful objects: its counters.
    def state_dict(self) -> dict[str, Any]:
        return asdict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = TrainState(**state)

    # ------------------------------------------------------------------------------------------------ one step
    def _losses(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast():
            out = self.train_model(inputs, targets)
        if self.balance is None or not out.routing:
            return {"ce": out.loss, "total": out.loss}
        return self.balance.loss_terms(out.loss, out.routing)

    def train_step(self) -> dict[str, float]:
        """One optimizer step; a non-finite loss or gradient skips it without touching optimizer state."""
        cfg, step = self.cfg.train, self.state.step
        self.model.train()
        set_lr(self.optimizer, schedule_factor(step, cfg))
        if self.balance is not None:
            self.balance.start_step()
        for cb in self.callbacks:
            cb.on_step_start(self, step + 1)
        sums: dict[str, torch.Tensor] = {}
        for micro in range(cfg.grad_accum):
            distributed.set_grad_sync(self.train_model, micro == cfg.grad_accum - 1)
            inputs, targets = self.sampler.batch_at(step, micro)
            terms = self._losses(inputs.to(self.device), targets.to(self.device))
            (terms["total"] / cfg.grad_accum).backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach() / cfg.grad_accum
        distributed.reduce_expert_grads(self.train_model, self.dist)  # DDP × expert parallelism (else a no-op)
        grad_norm = distributed.clip_grad_norm_(list(self.model.parameters()), self.cfg.optim.grad_clip)
        sums = self.dist.mean(sums)  # the global batch's losses, identical on every rank (no-op in one process)
        finite = bool(torch.isfinite(sums["total"]) & torch.isfinite(grad_norm))  # the step's one host sync
        extra: dict[str, float] = {}
        if finite:
            for cb in self.callbacks:
                extra.update(cb.on_before_optimizer_step(self, step + 1))
            self.optimizer.step()  # its pre-hooks include the balance policy's expert-bias update
            self.state.nonfinite_streak = 0
        else:
            self.state.skipped_steps += 1
            self.state.nonfinite_streak += 1
            if self.state.nonfinite_streak == 1:  # keep the way back before later saves could prune it
                self.mark_rollback(step + 1, "non-finite loss or gradient")
            self._log_skipped(step + 1, float(sums["total"]), float(grad_norm))
        self.optimizer.zero_grad(set_to_none=True)  # also drops a skipped step's (non-finite) accumulated grads
        self.state.step += 1
        self.state.tokens += self.tokens_per_step
        metrics = {_METRIC_NAMES[k]: float(v) for k, v in sums.items()}
        if self.balance is not None:
            metrics.update(self.balance.step_metrics())
        metrics.update(extra)
        metrics.update(self.sampler.metrics(self.state.step))  # data/tokens/<source> of a mixture (train.data)
        metrics.update({"train/grad_norm": float(grad_norm), "train/lr": self.optimizer.param_groups[0]["lr"],
                        "train/tokens": float(self.state.tokens), "train/skipped_steps": float(self.state.skipped_steps)})
        if self.state.nonfinite_streak >= cfg.max_nonfinite:
            self.request_stop(
                f"{self.state.nonfinite_streak} consecutive non-finite steps (loss or gradient) up to step "
                f"{self.state.step} (train.max_nonfinite={cfg.max_nonfinite}); model and optimizer are those of the "
                f"last good step {self.state.step - self.state.nonfinite_streak}", roll_back=True
            )
        return metrics

    def _log_skipped(self, step: int, loss: float, grad_norm: float) -> None:
        """A skipped step is an event: one stderr line and a ``"event": "nonfinite_skip"`` record in metrics.jsonl."""
        s, limit = self.state, self.cfg.train.max_nonfinite
        print(f"warning: step {step}: non-finite loss {loss} / grad norm {grad_norm}; step skipped, optimizer "
              f"state untouched ({s.skipped_steps} skipped in total, {s.nonfinite_streak}/{limit} in a row)",
              file=sys.stderr, flush=True)
        self.logger.event({"step": step, "event": "nonfinite_skip", "loss": loss, "grad_norm": grad_norm,
                           "skipped_steps": s.skipped_steps, "nonfinite_streak": s.nonfinite_streak})

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        metrics = self.validation.evaluate(self.model, self.autocast)
        self.state.last_val_loss = metrics["val/loss"]
        return metrics

    # ------------------------------------------------------------------------------------------------ the loop
    def fit(self, until_step: int | None = None) -> TrainState:
        """Train to ``train.max_steps`` (or pause at ``until_step`` with a checkpoint; the schedule is unchanged)."""
        t = self.cfg.train
        last = t.max_steps if until_step is None else min(until_step, t.max_steps)
        rolled_back = self.resumed is not None and self.resumed.rolled_back
        self.logger.open(self.state.step, keep_dropped=rolled_back)
        self._log_config_changes()
        for cb in self.callbacks:
            cb.on_train_start(self)
        try:
            while self.state.step < last and self.stop_reason is None:
                started = time.perf_counter()
                metrics = self.train_step()
                step = self.state.step
                metrics["train/tokens_per_s"] = self.tokens_per_step / (time.perf_counter() - started)
                metrics.update(self.mfu.metrics(metrics["train/tokens_per_s"]))  # active FLOPs (train.mfu)
                if step % t.eval_every == 0 or step == t.max_steps:
                    val = self.evaluate()
                    self.logger.log_eval(step, val)
                    for cb in self.callbacks:
                        cb.on_eval(self, step, val)
                for cb in self.callbacks:
                    cb.on_step_end(self, step, metrics)
                self.logger.log_step(step, metrics)  # before the checkpoint: a resumed run never lacks a record
                if step % t.ckpt_every == 0 or step == t.max_steps:
                    self.save_checkpoint()
                if self.dist.active and self.dist.any(self.stop_reason is not None):
                    self.request_stop("stopped on another rank")  # ranks must leave the loop together
            if self.stop_reason is not None or self.state.step < t.max_steps:
                self.save_checkpoint()
        finally:
            for cb in self.callbacks:
                cb.on_train_end(self)
            self.logger.close()
        return self.state

    @property
    def tokens_per_step(self) -> int:
        t = self.cfg.train
        return t.grad_accum * t.batch_size * self.dist.world_size * self.cfg.data.seq_len

    # ------------------------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        return self.checkpointer.save(self.state.step)  # collective under torchrun

    def resume(self, step: int | None = None) -> Resumed:
        """Continue from checkpoint ``step``, or the newest valid one (:meth:`train.checkpoint.Checkpointer.resume`)."""
        self.resumed = self.checkpointer.resume(step)
        if self.state.nonfinite_streak >= self.cfg.train.max_nonfinite:
            self.state.nonfinite_streak = 0  # resuming the stopped state: a fresh allowance, not one more NaN step
        return self.resumed

    def _log_config_changes(self) -> None:
        """What this resume changed (train.resume: keys that may change) — on stdout and as a metrics event."""
        if self.resumed is None or not self.resumed.changes:
            return
        first = self.state.step + 1  # logged at the first step that trains with them: a rollback past it drops it
        if self.dist.is_main:
            print(f"resumed with changes from step {first} on: {', '.join(self.resumed.changes)}", flush=True)
        self.logger.event({"step": first, "event": "config_change", "changes": self.resumed.changes})
