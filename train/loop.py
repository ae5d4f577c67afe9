"""The training loop: one optimizer step = grad-accumulated forward/backward, a finite check, the step, callbacks.

Everything that watches the run (progress bar, JSONL, wandb, checkpoints, monitors, alarms) is a callback
(:mod:`train.callbacks`); how the pieces are built lives in :mod:`train.build`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from hyperp.errors import CheckpointError
from moe.balance import balance_log, update_selection_bias
from moe.losses import GlobalBalance, micro_batch_aux, z_loss
from train import checkpoint, distributed
from train.build import Components
from train.callbacks import Callback, JSONLLogger
from train.config import RunConfig
from train.schedule import lr_multiplier, set_lr


_METRIC_NAMES = {"ce": "train/loss", "total": "train/total_loss", "aux": "moe/aux_loss", "z": "moe/z_loss"}


@dataclass
class TrainState:
    step: int = 0  # optimizer steps completed
    tokens: int = 0
    skipped_steps: int = 0
    nonfinite_streak: int = 0


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path, parts: Components, callbacks: list[Callback]) -> None:
        self.cfg, self.run_dir, self.callbacks = cfg, Path(run_dir), callbacks
        self.model, self.optimizer, self.device = parts.model, parts.optimizer, parts.device
        self.sampler = parts.sampler
        self.dist, self.train_model = parts.dist, parts.train_model or parts.model  # train.distributed
        self.val_batches = parts.data.val_batches(cfg.train.batch_size, cfg.train.eval_batches,
                                                  self.dist.rank, self.dist.world_size)
        self.autocast = parts.autocast
        self.state = TrainState()
        self.balance = GlobalBalance()
        self.stop_reason: str | None = None
        self.last_val_loss = float("nan")

    def request_stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason

    # ------------------------------------------------------------------------------------------------ one step
    def _losses(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        moe_cfg = self.cfg.model.moe
        with self.autocast():
            out = self.train_model(inputs, targets)
        terms = {"ce": out.loss}
        if out.routing:
            global_aux = self.balance.aux(out.routing)  # always: the step's counts drive the bias and the metrics
            aux = global_aux if moe_cfg.global_aux else micro_batch_aux(out.routing)
            aux_weight = moe_cfg.aux_weight if moe_cfg.trains_aux else 0.0  # "bias": logged, not trained on
            terms["aux"] = aux
            terms["z"] = torch.stack([z_loss(s.logits) for s in out.routing]).sum()
            terms["total"] = out.loss + aux_weight * aux + moe_cfg.z_weight * terms["z"]
        else:
            terms["total"] = out.loss
        return terms

    def train_step(self) -> dict[str, float]:
        """One optimizer step; a non-finite loss or gradient skips it without touching optimizer state."""
        cfg, step = self.cfg.train, self.state.step
        self.model.train()
        set_lr(self.optimizer, lr_multiplier(step, cfg))
        self.balance.reset()
        for cb in self.callbacks:
            cb.on_step_start(self, step + 1)
        sums: dict[str, torch.Tensor] = {}
        for micro in range(cfg.grad_accum):
            inputs, targets = self.sampler.batch_at(step, micro)
            terms = self._losses(inputs.to(self.device), targets.to(self.device))
            (terms["total"] / cfg.grad_accum).backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach() / cfg.grad_accum
        clip = self.cfg.optim.grad_clip
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        grad_norm = distributed.full_norm(grad_norm)  # FSDP2 returns a DTensor
        sums = self.dist.mean(sums)  # the global batch's losses, identical on every rank (no-op in one process)
        finite = bool(torch.isfinite(sums["total"]) & torch.isfinite(grad_norm))  # the step's one host sync
        extra: dict[str, float] = {}
        if finite:
            for cb in self.callbacks:
                extra.update(cb.on_before_optimizer_step(self, step + 1))
            self.optimizer.step()
            if self.cfg.model.moe is not None and self.cfg.model.moe.uses_bias:
                update_selection_bias(self.model, self.balance.counts, self.cfg.model.moe.bias_rate)
            self.state.nonfinite_streak = 0
        else:
            self.state.skipped_steps += 1
            self.state.nonfinite_streak += 1
            self._log_skipped(step + 1, float(sums["total"]), float(grad_norm))
        self.optimizer.zero_grad(set_to_none=True)  # also drops a skipped step's (non-finite) accumulated grads
        self.state.step += 1
        self.state.tokens += self.tokens_per_step
        metrics = {_METRIC_NAMES[k]: float(v) for k, v in sums.items()}
        if "aux" in sums and self.cfg.model.moe.global_aux:
            metrics["moe/aux_loss"] = float(self.balance.value())  # exact step-level global aux
        if self.balance.counts is not None:
            metrics.update(balance_log(self.balance.counts))
        metrics.update(extra)
        metrics.update(self.sampler.metrics(self.state.step))  # data/tokens/<source> of a mixture (train.data)
        metrics.update({"train/grad_norm": float(grad_norm), "train/lr": self.optimizer.param_groups[0]["lr"],
                        "train/tokens": float(self.state.tokens), "train/skipped_steps": float(self.state.skipped_steps)})
        if self.state.nonfinite_streak >= cfg.max_nonfinite:
            self.request_stop(
                f"{self.state.nonfinite_streak} consecutive non-finite steps (loss or gradient) up to step "
                f"{self.state.step} (train.max_nonfinite={cfg.max_nonfinite}); model and optimizer are those of the "
                f"last good step {self.state.step - self.state.nonfinite_streak}"
            )
        return metrics

    def _log_skipped(self, step: int, loss: float, grad_norm: float) -> None:
        """A skipped step is an event: one stderr line and a ``"event": "nonfinite_skip"`` record in metrics.jsonl."""
        s, limit = self.state, self.cfg.train.max_nonfinite
        print(f"warning: step {step}: non-finite loss {loss} / grad norm {grad_norm}; step skipped, optimizer "
              f"state untouched ({s.skipped_steps} skipped in total, {s.nonfinite_streak}/{limit} in a row)",
              file=sys.stderr, flush=True)
        record = {"step": step, "event": "nonfinite_skip", "loss": loss, "grad_norm": grad_norm,
                  "skipped_steps": s.skipped_steps, "nonfinite_streak": s.nonfinite_streak}
        for cb in self.callbacks:
            if isinstance(cb, JSONLLogger):
                cb.write(record)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        losses = []
        for inputs, targets in self.val_batches:
            with self.autocast():
                losses.append(self.model(inputs.to(self.device), targets.to(self.device)).loss.float())
        self.last_val_loss = float(self.dist.mean({"val": torch.stack(losses).mean()})["val"])
        return {"val/loss": self.last_val_loss}

    # ------------------------------------------------------------------------------------------------ the loop
    def fit(self, until_step: int | None = None) -> TrainState:
        """Train to ``train.max_steps`` (or pause at ``until_step`` with a checkpoint; the schedule is unchanged)."""
        last = self.cfg.train.max_steps if until_step is None else min(until_step, self.cfg.train.max_steps)
        for cb in self.callbacks:
            cb.on_train_start(self)
        try:
            while self.state.step < last and self.stop_reason is None:
                started = time.perf_counter()
                metrics = self.train_step()
                step = self.state.step
                metrics["train/tokens_per_s"] = self.tokens_per_step / (time.perf_counter() - started)
                if step % self.cfg.train.eval_every == 0 or step == self.cfg.train.max_steps:
                    val = self.evaluate()
                    for cb in self.callbacks:
                        cb.on_eval(self, step, val)
                for cb in self.callbacks:
                    cb.on_step_end(self, step, metrics)
                if self.dist.active and self.dist.any(self.stop_reason is not None):
                    self.request_stop("stopped on another rank")  # ranks must leave the loop together
            if self.stop_reason is not None or self.state.step < self.cfg.train.max_steps:
                self.save_checkpoint()
        finally:
            for cb in self.callbacks:
                cb.on_train_end(self)
        return self.state

    @property
    def tokens_per_step(self) -> int:
        t = self.cfg.train
        return t.grad_accum * t.batch_size * self.dist.world_size * self.cfg.data.seq_len

    # ------------------------------------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "trainer": asdict(self.state),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks},
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "last_val_loss": self.last_val_loss,
        }

    def load_callback_states(self, states: dict[str, dict[str, Any]]) -> None:
        """Restore each callback's state by its class name (callbacks added or removed since are fine)."""
        for cb in self.callbacks:
            if type(cb).__name__ in states:
                cb.load_state_dict(states[type(cb).__name__])

    def save_checkpoint(self) -> Path:
        if self.dist.active:
            return distributed.save(self)  # sharded torch.distributed.checkpoint, collective
        return checkpoint.save(self.run_dir, self.state.step, self.checkpoint_state(), self.cfg.train.keep_checkpoints)

    def resume(self) -> Path:
        """Load the newest valid checkpoint; any mismatch → one-line CheckpointError before anything is changed."""
        dcp_path = distributed.latest(self.run_dir)
        if dcp_path is not None:  # written by a torchrun run; loads at any world size
            return distributed.resume(self, dcp_path)
        if self.dist.active and self.cfg.train.parallel == "fsdp":
            raise CheckpointError("train.parallel='fsdp' resumes only distributed checkpoints; convert or use ddp")
        path, state = checkpoint.load_latest(self.run_dir, map_location=self.device)
        try:
            saved_model = state["config"]["model"]
        except (KeyError, TypeError):
            raise CheckpointError(f"checkpoint {path} has no run config (not a training checkpoint)") from None
        diff = _first_difference(saved_model, self.cfg.to_dict()["model"], "model")
        if diff is not None:
            raise CheckpointError(f"checkpoint {path} was written for a different model config than this run's: {diff}")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.load_callback_states(state["callbacks"])
            self.state = TrainState(**state["trainer"])
            torch.set_rng_state(state["rng"]["torch"])
            if state["rng"]["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as err:  # torch's load_state_dict messages span lines
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise CheckpointError(f"checkpoint {path} does not fit this run ({type(err).__name__}: {first})") from None
        self.last_val_loss = state.get("last_val_loss", float("nan"))
        return path


def _first_difference(saved: Any, current: Any, key: str) -> str | None:
    """``"model.hidden: checkpoint 32, this run 64"`` for the first differing config key, else None."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for k in sorted(set(saved) | set(current)):
            diff = _first_difference(saved.get(k), current.get(k), f"{key}.{k}")
            if diff is not None:
                return diff
        return None
    return None if saved == current else f"{key}: checkpoint {saved!r}, this run {current!r}"
