"""``train.compile = true``: 20 training steps with a compiled forward/backward equal eager training.

Why float64, and the bound: compiling changes only how the forward and backward are computed — fused kernels that
reorder reductions — never the math; the optimizer runs eagerly in both runs. In float64 a reduction of n terms in
any order differs by at most n·u·Σ|t| (u = 1.1e-16); the largest reductions here are over 128 tokens × 64 features,
so a gradient entry moves by ≲ 1e-12 relative, and MuonH (orthogonalized, normalized updates on a fixed sphere) does
not amplify it beyond the update size. 20 steps accumulate ≲ 1e-10 relative in the losses: the bound below, which
a real difference (a dropped hook, a stale graph, a missing grad) exceeds by orders of magnitude (step-1 loss 6.2,
per-step changes ~1e-2). Monitor steps (every 5th here) run eagerly through forward hooks and must log the same
statistics.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import tiny_overrides
from tests.runs import argv, series
from train.__main__ import main

STEPS = 20
LOSS_RTOL = 1e-10


@pytest.mark.slow
@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_compiled_training_equals_eager(text_corpus: Path, tmp_path: Path, moe: bool) -> None:
    sets = tiny_overrides(text_corpus, tmp_path / "cache", moe=moe, **{
        "train.max_steps": STEPS, "train.eval_every": 10, "train.ckpt_every": STEPS, "train.dtype": '"float64"',
        "optim.name": '"muonh"', "monitor.every": 5})
    assert main(argv(sets, tmp_path / "eager")) == 0
    assert main(argv([*sets, "train.compile=true"], tmp_path / "compiled")) == 0
    for key in ("train/loss", "val/loss", "train/grad_norm", "monitor/z_logits_mean"):
        eager, compiled = series(tmp_path / "eager", key), series(tmp_path / "compiled", key)
        assert eager and sorted(eager) == sorted(compiled), key
        for step, value in eager.items():
            assert abs(compiled[step] - value) <= LOSS_RTOL * abs(value), (key, step, value, compiled[step])
