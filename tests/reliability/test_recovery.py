"""Recovery after a divergence (issue 22 (3)): the checkpoint before a non-finite streak or a loss spike is pinned and
survives pruning, a divergence stop sends ``--resume`` there, ``--resume-from STEP`` rolls back to any kept
checkpoint (optionally with another lr or data order), and the non-finite counter is not restored at its limit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_overrides
from tests.runs import argv, assert_one_line_error, records, series
from train import checkpoint
from train.__main__ import EXIT_STOPPED, main
from train.build import build_components
from train.callbacks import build_callbacks
from train.config import load_config
from train.loop import Trainer


def _steps(run: Path) -> list[int]:
    return [int(p.name.removeprefix("step_")) for p in checkpoint.list_checkpoints(run)]


def _run(capsys, args: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------------------------ through the CLI


def test_a_diverged_run_resumes_from_the_checkpoint_pinned_before_it(text_corpus: Path, tmp_path: Path, capsys) -> None:
    """AdamW at lr 1e30 from step 7 on: the weights overflow, every later step is non-finite, the run stops at the
    second one; a plain --resume (the old lr) starts from the pinned step 6 and continues exactly as a run that never
    diverged, its loss finite and falling."""
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{
        "optim.name": '"adamw"', "train.max_steps": 12, "train.ckpt_every": 2, "train.keep_checkpoints": 2,
        "train.max_nonfinite": 2, "train.eval_every": 100})
    run, straight = tmp_path / "run", tmp_path / "straight"
    assert main(argv(sets, straight)) == 0
    assert main(argv(sets, run, "--stop-after", "6")) == 0

    rc, out, err = _run(capsys, argv([*sets, "optim.lr=1e30"], run, "--resume"))
    assert rc == EXIT_STOPPED, err
    assert "done:" not in out  # the stop is reported once, not after a "done … val loss nan" line
    (stop,) = [line for line in err.splitlines() if line.startswith("stopped early")]
    assert "at step 9" in stop and "--resume starts from step 6" in stop and "--resume-from 9" in stop, stop
    assert [r["step"] for r in records(run) if r.get("event") == "nonfinite_skip"] == [8, 9]
    # step 8's save would have pruned step 6 (keep 2); the pin kept it
    assert _steps(run) == [6, 8, 9]
    assert json.loads((run / "checkpoints" / "pins.json").read_text()) == {
        "6": {"why": "non-finite loss or gradient", "at": 8}}

    rc, out, err = _run(capsys, argv(sets, run, "--resume"))
    assert rc == 0, err
    assert "step_000006 (step 6): rolled back to step 6" in out and "--resume-from 9" in out
    losses, reference = series(run, "train/loss"), series(straight, "train/loss")
    assert losses == reference  # the pre-divergence state came back exactly: weights, optimizer, RNG, counters
    assert all(math.isfinite(v) for v in losses.values()) and losses[12] < losses[7] < losses[1]
    assert not [r for r in records(run) if r.get("event")]  # the diverged stretch left metrics.jsonl …
    abandoned = [json.loads(line) for line in (run / "metrics.abandoned.jsonl").read_text().splitlines()]
    assert [r["step"] for r in abandoned if r.get("event") == "nonfinite_skip"] == [8, 9]  # … but is kept
    names = sorted(p.name for p in checkpoint.checkpoint_dir(run).iterdir())
    assert names == ["pins.json", "step_000006", "step_000010", "step_000012"], names  # rejected-9 pruned with 8


def test_a_loss_spike_alarm_stops_and_rolls_back(text_corpus: Path, tmp_path: Path, capsys) -> None:
    """monitor.on_alarm = "stop": an lr spike at step 5 makes step 6's loss spike; --resume starts from step 4."""
    sets = tiny_overrides(text_corpus, tmp_path / "cache", moe=True, **{
        "optim.name": '"adamw"', "train.max_steps": 12, "train.ckpt_every": 2, "train.keep_checkpoints": 1,
        "train.eval_every": 100, "monitor.spike_min_history": 3, "monitor.on_alarm": '"stop"'})
    run = tmp_path / "run"
    assert main(argv(sets, run, "--stop-after", "4")) == 0
    rc, _, err = _run(capsys, argv([*sets, "optim.lr=1000"], run, "--resume"))
    assert rc == EXIT_STOPPED, err
    assert "ALARM loss_spike" in err and "--resume starts from step 4" in err, err
    assert series(run, "train/loss")[6] > 100 * series(run, "train/loss")[5]
    assert _steps(run) == [4, 6]  # keep 1, plus the pin
    rc, out, err = _run(capsys, argv(sets, run, "--resume", "--stop-after", "2"))
    assert rc == 0 and "rolled back to step 4" in out, (out, err)
    losses = series(run, "train/loss")
    assert sorted(losses) == list(range(1, 7)) and losses[6] < losses[1]


def test_resume_from_any_kept_checkpoint_with_another_data_order(text_corpus: Path, tmp_path: Path, capsys) -> None:
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 6, "train.ckpt_every": 1})
    run = tmp_path / "run"
    assert main(argv(sets, run)) == 0
    original = series(run, "train/loss")

    rc, _, err = _run(capsys, argv(sets, run, "--resume-from", "2"))
    assert_one_line_error(rc, err, "--resume-from 2", "step_000002", "kept: 4, 5, 6")

    assert main(argv(sets, run, "--resume-from", "4")) == 0  # the same run again from step 4: the same steps
    assert series(run, "train/loss") == original

    rc, out, err = _run(capsys, argv([*sets, "data.seed=1"], run, "--resume-from", "4"))
    assert rc == 0, err
    assert "data.seed 0 → 1" in out
    reshuffled = series(run, "train/loss")
    assert [reshuffled[s] for s in (1, 2, 3, 4)] == [original[s] for s in (1, 2, 3, 4)]
    assert reshuffled[5] != original[5] and math.isfinite(reshuffled[5])  # other batches from step 5 on


# ------------------------------------------------------------------------------------------------ the trainer


@pytest.mark.parametrize(("saved", "restored"), [(3, 0), (1, 1)], ids=["at-limit", "mid-streak"])
def test_nonfinite_streak_is_not_restored_at_its_limit(text_corpus: Path, tmp_path: Path, saved: int,
                                                        restored: int) -> None:
    """At the limit, the resumed run would stop after one more non-finite step (issue 22 (3)); below it the count is
    the run's state and must come back (an interrupted streak resumes bit-identically)."""
    cfg = load_config("configs/tiny-dense.toml", tiny_overrides(text_corpus, tmp_path / "cache",
                                                                **{"train.max_nonfinite": 3}))
    run = tmp_path / "run"
    run.mkdir()
    trainer = Trainer(cfg, run, build_components(cfg), build_callbacks(cfg))
    trainer.state.step, trainer.state.nonfinite_streak = 5, saved
    trainer.save_checkpoint()
    again = Trainer(cfg, run, build_components(cfg), build_callbacks(cfg))
    again.resume()
    assert again.state.step == 5 and again.state.nonfinite_streak == restored


# ------------------------------------------------------------------------------------------------ pins and pruning


def _save(run: Path, steps, keep: int = 2) -> None:
    for step in steps:
        checkpoint.save(run, step, {"step": torch.tensor(step)}, keep=keep)


def test_a_pinned_checkpoint_survives_pruning(tmp_path: Path) -> None:
    _save(tmp_path, [2, 4, 6])
    assert _steps(tmp_path) == [4, 6]
    assert checkpoint.pin_before(tmp_path, 7, "loss_spike", keep_pinned=2) == 4  # step 7 ran on step 6's weights
    _save(tmp_path, [8, 10, 12, 14])
    assert _steps(tmp_path) == [4, 12, 14]
    assert checkpoint.pin_before(tmp_path, 16, "loss_spike", keep_pinned=2) == 14
    assert checkpoint.pin_before(tmp_path, 16, "non-finite loss or gradient", keep_pinned=2) == 14  # first reason kept
    assert checkpoint.pin_before(tmp_path, 3, "loss_spike", keep_pinned=2) is None  # no checkpoint before step 2
    _save(tmp_path, [16, 18])
    assert _steps(tmp_path) == [4, 14, 16, 18]
    checkpoint.pin_before(tmp_path, 19, "loss_spike", keep_pinned=2)  # a third pin: the oldest is released …
    _save(tmp_path, [20])
    assert _steps(tmp_path) == [14, 16, 18, 20]  # … and pruned like any other checkpoint
    assert checkpoint.read_pins(tmp_path) == {14: checkpoint.Pin("loss_spike", 16), 16: checkpoint.Pin("loss_spike", 19)}


def test_rollback_point_is_the_pin_before_the_earliest_event_of_the_incident(tmp_path: Path) -> None:
    """A loss spike a few steps before a non-finite streak is one incident: the streak's pin already holds the
    damage. An event older than the window is another incident."""
    _save(tmp_path, [10, 20, 100, 110, 118], keep=10)
    checkpoint.pin_before(tmp_path, 15, "loss_spike", keep_pinned=5)  # pins 10
    checkpoint.pin_before(tmp_path, 112, "loss_spike", keep_pinned=5)  # pins 110
    checkpoint.pin_before(tmp_path, 120, "non-finite loss or gradient", keep_pinned=5)  # pins 118
    assert checkpoint.rollback_point(tmp_path, 124, window=20) == 110
    assert checkpoint.rollback_point(tmp_path, 124, window=5) == 118
    assert checkpoint.rollback_point(tmp_path, 124, window=200) == 10


def test_rolling_back_abandons_newer_pins_and_prunes_rejected_checkpoints(tmp_path: Path) -> None:
    _save(tmp_path, [2, 4, 6, 8])
    checkpoint.pin_before(tmp_path, 9, "loss_spike", keep_pinned=3)  # pins 6
    _save(tmp_path, [5])  # a resume from an older checkpoint saves step 5: 6 and 8 are an abandoned timeline
    root = checkpoint.checkpoint_dir(tmp_path)
    assert sorted(p.name.rsplit("-", 1)[0] for p in root.glob("rejected-*")) == ["rejected-step_000006",
                                                                                 "rejected-step_000008"]
    assert checkpoint.read_pins(tmp_path) == {}  # the new step 6 will not inherit the old one's pin
    _save(tmp_path, [6, 7, 8])
    assert _steps(tmp_path) == [7, 8]
    # rejected ones are kept while a checkpoint of their age would be (older than step 7: gone)
    assert sorted(p.name.rsplit("-", 1)[0] for p in root.glob("rejected-*")) == ["rejected-step_000008"]
    _save(tmp_path, [9, 10])
    assert sorted(p.name for p in root.iterdir()) == ["step_000009", "step_000010"]


def test_a_corrupt_pins_file_prunes_nothing(tmp_path: Path) -> None:
    _save(tmp_path, [1, 2])
    (checkpoint.checkpoint_dir(tmp_path) / "pins.json").write_text("{not json")
    with pytest.warns(UserWarning, match="pins.json is unreadable"):
        _save(tmp_path, [3])
    assert _steps(tmp_path) == [1, 2, 3]
