"""``python -m train.upcycle`` over real runs: a tiny dense run becomes an MoE run that starts where the dense one
ended (same logits) and keeps learning; bad input is one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_overrides
from tests.runs import argv, assert_one_line_error, series
from train.__main__ import main as train_main
from train.checkpoint import load_model_from_run
from train.upcycle import main as upcycle_main

MOE = {"model.moe.num_experts": 4, "model.moe.top_k": 2, "model.moe.expert_hidden": 32}  # 2 slices of the 64 MLP


def _upcycle_argv(dense: Path, sets: list[str], out: Path) -> list[str]:
    return [str(dense), *argv(sets, out)]


@pytest.mark.slow  # two 30-step runs: ~2 min on 2 busy cores
def test_upcycled_run_starts_at_the_dense_model_and_keeps_learning(text_corpus: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    dense, moe = tmp_path / "dense", tmp_path / "moe"
    assert train_main(argv(tiny_overrides(text_corpus, cache, **{"train.max_steps": 30, "train.eval_every": 30,
                                                                 "train.ckpt_every": 30}), dense)) == 0
    sets = tiny_overrides(text_corpus, cache, **MOE, **{"model.moe.aux_weight": 0.01, "train.max_steps": 30,
                                                        "train.eval_every": 30, "train.ckpt_every": 30})
    assert upcycle_main(_upcycle_argv(dense, sets, moe)) == 0
    dense_model, _ = load_model_from_run(dense)
    moe_model, _ = load_model_from_run(moe)
    tokens = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = dense_model(tokens).logits, moe_model(tokens).logits
    # fp32: the MLP's 64 hidden units summed in another order, ~64·6e-8 relative per layer, 2 layers + head
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    assert train_main(argv(sets, moe, "--resume")) == 0
    dense_loss, moe_loss = series(dense, "train/loss"), series(moe, "train/loss")
    # step 1 of both runs trains on the same batch: the MoE run starts with (nearly) all of the dense run's progress
    # (a fresh model would start at its step-1 loss), then keeps falling
    assert dense_loss[1] - moe_loss[1] > 0.8 * (dense_loss[1] - dense_loss[30]) > 0
    first, last = [sum(moe_loss[s] for s in steps) / 5 for steps in (range(1, 6), range(26, 31))]
    assert last < first
    assert series(moe, "val/loss")[30] < series(dense, "val/loss")[30]


def test_bad_upcycle_input_is_one_line(text_corpus: Path, tmp_path: Path, capsys) -> None:
    cache = tmp_path / "cache"
    moe_sets = tiny_overrides(text_corpus, cache, **MOE)
    assert upcycle_main(_upcycle_argv(tmp_path / "none", moe_sets, tmp_path / "a")) == 2
    assert_one_line_error(2, capsys.readouterr().err, "has no checkpoint to upcycle")
    dense = tmp_path / "dense"
    assert train_main(argv(tiny_overrides(text_corpus, cache, **{"train.max_steps": 1}), dense)) == 0
    capsys.readouterr()
    wider = tiny_overrides(text_corpus, cache, **MOE, **{"model.hidden": 64})
    assert upcycle_main(_upcycle_argv(dense, wider, tmp_path / "b")) == 2
    assert_one_line_error(2, capsys.readouterr().err, "model.hidden")
    assert not (tmp_path / "b").exists()  # refused before anything was written
    shouted = tmp_path / "shouted"  # a bpe-512 trained on other text: same vocab size, other merges
    shouted.mkdir()
    for doc in text_corpus.glob("*.txt"):
        (shouted / doc.name).write_text(doc.read_text().upper())
    other_tokenizer = tiny_overrides(shouted, cache, **MOE)
    assert upcycle_main(_upcycle_argv(dense, other_tokenizer, tmp_path / "c")) == 2
    assert_one_line_error(2, capsys.readouterr().err, "encodes text differently")
    assert not (tmp_path / "c").exists()
