"""moe.balance_target in a real run: the controller's schedule is logged and survives a checkpoint resume exactly."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import tiny_overrides
from tests.runs import argv, series
from train import checkpoint
from train.__main__ import main


def test_controller_schedule_is_logged_and_resumes_exactly(text_corpus: Path, tmp_path: Path) -> None:
    sets = tiny_overrides(text_corpus, tmp_path / "cache", moe=True, **{
        "model.moe.balance_target": 0.05, "train.max_steps": 6, "train.ckpt_every": 3})
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(argv(sets, straight)) == 0
    assert main(argv(sets, split, "--stop-after", "3")) == 0
    assert main(argv(sets, split, "--resume")) == 0
    weights = series(straight, "moe/balance/aux_weight")
    assert sorted(weights) == list(range(1, 7))
    assert weights == series(split, "moe/balance/aux_weight")  # exact, also after the resume at step 3
    assert series(straight, "moe/balance/maxvio_ema") == series(split, "moe/balance/maxvio_ema")
    assert series(straight, "train/loss") == series(split, "train/loss")
    assert weights[6] != 0.01  # it moved from the configured start (MaxVio of a 4-expert toy is far above 0.05)
    state = checkpoint.load(checkpoint.list_checkpoints(split)[-1])
    assert state["balance"]["controller"]["value"] == weights[6] and state["balance"]["controller"]["updates"] == 6
