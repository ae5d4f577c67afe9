"""Injected NaN batches: the step is skipped with optimizer state (sphere radius, momentum) byte-identical, logged
and counted; N in a row stop the run with a clear message, exit code 3 and a checkpoint of the last good state."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_overrides
from tests.runs import argv, records, series
from train import checkpoint
from train.__main__ import main
from train.build import build_components
from train.callbacks import build_callbacks
from train.config import load_config
from train.loop import Trainer


def _equal(a, b) -> bool:
    """Exact (bitwise for tensors) equality of nested state dicts."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _optim_state(optimizer) -> dict:
    """The optimizer's state_dict without the scheduled lr (set per step by the schedule, not optimizer state)."""
    sd = copy.deepcopy(optimizer.state_dict())
    for inner in sd.get("optimizers", [sd]):
        for group in inner["param_groups"]:
            group.pop("lr")
    return sd


def _poison(trainer: Trainer, bad_steps: set[int], micro: int | None = None) -> None:
    """Multiply the losses of ``bad_steps`` (1-based; only micro-batch ``micro`` if given) by NaN."""
    original, calls = trainer._losses, {"n": 0}

    def losses(inputs, targets):
        terms = original(inputs, targets)
        index = calls["n"] % trainer.cfg.train.grad_accum
        calls["n"] += 1
        if trainer.state.step + 1 in bad_steps and (micro is None or index == micro):
            terms = {k: v * float("nan") for k, v in terms.items()}
        return terms

    trainer._losses = losses  # type: ignore[method-assign]


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_nan_batch_skips_step_and_leaves_state_untouched(text_corpus: Path, tmp_path: Path, capsys, moe: bool) -> None:
    cfg = load_config("configs/tiny-dense.toml", tiny_overrides(text_corpus, tmp_path / "cache", moe=moe,
                                                      **{"train.grad_accum": 2, "train.max_steps": 4}))
    parts = build_components(cfg)
    (tmp_path / "run").mkdir()
    trainer = Trainer(cfg, tmp_path / "run", parts, build_callbacks(cfg))
    _poison(trainer, {2}, micro=1)  # the 2nd micro-batch of step 2: finite grads already accumulated
    trainer.train_step()
    sphere_states = [s for s in trainer.optimizer.state.values() if "radius" in s]
    assert sphere_states and all("momentum_buffer" in s or "exp_avg" in s for s in sphere_states)
    optim_before = _optim_state(trainer.optimizer)
    model_before = copy.deepcopy(trainer.model.state_dict())
    capsys.readouterr()
    metrics = trainer.train_step()
    assert _equal(_optim_state(trainer.optimizer), optim_before)  # radius, momentum, Adam moments, step counts
    assert _equal(trainer.model.state_dict(), model_before)
    assert all(p.grad is None for p in trainer.model.parameters())  # the partial accumulation is dropped
    assert trainer.state.skipped_steps == 1 and trainer.state.nonfinite_streak == 1 and trainer.state.step == 2
    assert metrics["train/skipped_steps"] == 1.0
    err = capsys.readouterr().err
    assert "warning: step 2: non-finite loss" in err and "step skipped" in err and "Traceback" not in err
    events = [r for r in records(tmp_path / "run") if r.get("event") == "nonfinite_skip"]
    assert len(events) == 1 and events[0]["step"] == 2 and events[0]["skipped_steps"] == 1
    trainer.train_step()  # a finite step afterwards trains and resets the streak
    assert trainer.state.nonfinite_streak == 0 and trainer.state.skipped_steps == 1
    assert not _equal(trainer.model.state_dict(), model_before)


def test_consecutive_nan_steps_stop_with_checkpoint_of_last_good_state(
    text_corpus: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    original = Trainer._losses

    def losses(self, inputs, targets):
        terms = original(self, inputs, targets)
        return {k: v * float("nan") for k, v in terms.items()} if self.state.step + 1 >= 3 else terms

    monkeypatch.setattr(Trainer, "_losses", losses)
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 8, "train.ckpt_every": 1,
                                                    "train.max_nonfinite": 2, "train.keep_checkpoints": 5})
    run = tmp_path / "run"
    rc = main(argv(sets, run))
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "Traceback" not in err
    stop = [line for line in err.splitlines() if line.startswith("stopped early")]
    assert len(stop) == 1 and "2 consecutive non-finite steps" in stop[0] and "last good step 2" in stop[0], err
    assert "step_000004" in stop[0] and "--resume" in stop[0]
    assert err.count("warning: step ") == 2
    names = [p.name for p in checkpoint.list_checkpoints(run)]
    assert names[-1] == "step_000004"
    good, last = (checkpoint.load(run / "checkpoints" / n) for n in ("step_000002", "step_000004"))
    assert _equal(last["model"], good["model"])
    assert _equal([o["state"] for o in last["optimizer"]["optimizers"]],
                  [o["state"] for o in good["optimizer"]["optimizers"]])
    assert last["trainer"]["skipped_steps"] == 2 and last["trainer"]["step"] == 4
    assert [r["step"] for r in records(run) if r.get("event") == "nonfinite_skip"] == [3, 4]
    assert series(run, "train/skipped_steps")[4] == 2.0
