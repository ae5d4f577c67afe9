"""What a run says it uses: the start block (parameters, tokens per step, the lr per group after the HyperP transfer),
step lines with elapsed time and ETA in batch mode, and the console saved as ``RUN_DIR/console.log``. References are
closed forms from the config (parameter counts from the layer shapes, η₀·(T/T₀)^(−0.32)) and the lr the optimizer
actually used (metrics.jsonl)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides
from tests.runs import argv, series
from train.__main__ import main

STEPS, SEQ, BATCH = 4, 32, 4
HIDDEN, LAYERS, VOCAB, EXPERTS, TOP_K, EXPERT_HIDDEN = 32, 2, 512, 4, 2, 32
LR, TOKENS_RATIO = 0.02, 10.0  # the [hyperp] base trained on 10× this run's tokens


@pytest.fixture(scope="module")
def run(text_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Trained in two invocations (stopped after 2 steps, resumed): stdout of both, as a batch job sees it."""
    tmp = tmp_path_factory.mktemp("report")
    sets = tiny_overrides(text_corpus, tmp / "cache", moe=True, **{
        "train.max_steps": STEPS, "train.eval_every": 2, "train.ckpt_every": 2, "train.decay": '"constant"',
        "optim.name": '"muonh"', "optim.lr": LR, "hyperp.base_tokens": TOKENS_RATIO * STEPS * BATCH * SEQ,
        "log.progress": "true"})
    out = tmp / "run"
    text = io.StringIO()
    with contextlib.redirect_stdout(text):  # not a terminal: step lines are printed, not drawn
        assert main(argv(sets, out, "--stop-after", "2")) == 0
        assert main(argv(sets, out, "--resume")) == 0
    return out, text.getvalue()


def test_start_block_counts_parameters_and_tokens_and_shows_the_transferred_lr(run: tuple[Path, str]) -> None:
    run_dir, stdout = run
    first = stdout[:stdout.index("run        ", 1)]  # the first invocation's block
    expert = 3 * HIDDEN * EXPERT_HIDDEN  # gate, up, down
    moe_layers = LAYERS  # tiny_overrides(moe=True): every layer is an MoE layer
    inactive = moe_layers * (EXPERTS - TOP_K) * expert
    from models.qwen3 import build_model
    from train.config import load_config

    model = build_model(load_config(run_dir / "config.toml").model)
    total = sum(p.numel() for p in model.parameters())
    embedding = VOCAB * HIDDEN * (1 if model.config.tie_embeddings else 2)
    assert (f"parameters {total:,} total, {total - inactive:,} active per token, "
            f"{embedding:,} embedding + head") in first
    assert f"{BATCH} seq × {SEQ} tokens × 1 accum × 1 ranks = {BATCH * SEQ:,} per step" in first
    assert "device     cpu; parameters float32, compute float32; torch.compile off" in first
    peak = LR * TOKENS_RATIO ** 0.32  # (T/T₀)^(−0.32) with T₀ = 10·T; depth and batch are the base's
    assert re.search(rf"sphere +MuonH +peak lr {peak:.4g} ", first), first
    assert f"HyperP transfer ×{TOKENS_RATIO ** 0.32:.4g} of optim.lr = {LR:g}" in first
    used = series(run_dir, "train/lr")  # what the optimizer ran with: constant schedule, no warmup
    assert sorted(used) == list(range(1, STEPS + 1))
    assert all(abs(lr - peak) <= 1e-12 * peak for lr in used.values())


def test_batch_step_lines_have_elapsed_and_eta_and_no_val_before_the_first_eval(run: tuple[Path, str]) -> None:
    _, stdout = run
    lines = {int(m.group(1)): line for line in stdout.splitlines() if (m := re.match(r"step +(\d+)/", line))}
    assert sorted(lines) == list(range(1, STEPS + 1))
    for step, line in lines.items():
        assert re.search(r" elapsed \d+:\d\d:\d\d eta \d+:\d\d:\d\d$", line), line
        assert ("val " in line) == (step >= 2) and "nan" not in line
    assert lines[STEPS].endswith("eta 0:00:00")


def test_console_log_keeps_both_invocations(run: tuple[Path, str]) -> None:
    run_dir, stdout = run
    log = (run_dir / "console.log").read_text(encoding="utf-8")
    headers = [line for line in log.splitlines() if line.startswith("=== ")]
    assert len(headers) == 2 and "--stop-after 2" in headers[0] and "--resume" in headers[1]
    logged = iter(log.splitlines())
    assert all(line in logged for line in stdout.splitlines()), log  # every printed line, in order (plus stderr's)
    assert sum(line.startswith("run        ") for line in log.splitlines()) == 2
