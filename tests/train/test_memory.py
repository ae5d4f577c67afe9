"""The memory guard (issue 22 (5)): the estimate against what a real model, optimizer and forward allocate, and the
one-line refusals (before allocating, and when an allocation fails while training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_overrides
from tests.runs import argv, assert_one_line_error
from train import memory
from train.__main__ import main
from train.build import build_components
from train.callbacks import build_callbacks
from train.config import load_config
from train.loop import Trainer

_SHAPES = ["model.vocab_size=512", "data.seq_len=64", "model.max_seq_len=64", "train.batch_size=4", "model.hidden=64",
           "model.n_layers=2", "model.head_dim=16", "model.mlp_hidden=128"]
_MOE = ["model.moe.num_experts=8", "model.moe.top_k=2", "model.moe.expert_hidden=32"]
VARIANTS = {
    "dense-muonh": [],
    "moe-muonh": _MOE,
    "moe-shared-adamh-joint": [*_MOE, "model.moe.shared_expert=true", 'optim.name="adamh"',
                               'optim.expert_sphere="joint"', "model.gated_attn=true"],
    "moe-adamw-tied": [*_MOE, 'optim.name="adamw"', "model.tie_embeddings=true"],
    "dense-muon-fp64": ['optim.name="muon"', 'train.dtype="float64"', "optim.wd_base_depth=4"],
}


def _storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a tied weight counts once)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_parameters_and_optimizer_state_are_counted_exactly(text_corpus: Path, tmp_path: Path, variant: str) -> None:
    """Build the run, take one step (optimizer state is allocated lazily), and count every byte it holds."""
    sets = [*tiny_overrides(text_corpus, tmp_path / "cache"), *_SHAPES, *VARIANTS[variant]]
    cfg = load_config("configs/tiny-dense.toml", sets)
    (tmp_path / "run").mkdir()
    trainer = Trainer(cfg, tmp_path / "run", build_components(cfg), build_callbacks(cfg))
    trainer.train_step()
    state = [v for s in trainer.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    params, optimizer = memory.weight_memory(cfg)
    assert params == _storage_bytes(trainer.model.parameters())
    assert optimizer == _storage_bytes(state)


def _saved_for_backward(cfg) -> int:
    """Bytes of the distinct storages a real forward + loss saves for backward (parameters excluded)."""
    from models.qwen3 import build_model

    model = build_model(cfg.model)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, cfg.model.vocab_size, (cfg.train.batch_size, cfg.data.seq_len))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, ids)
    return sum(n for ptr, n in saved.items() if ptr not in params)


@pytest.mark.parametrize("variant", ["dense", "moe", "moe-shared", "wide", "long-gqa", "gated"])
def test_activation_estimate_is_within_a_factor_2_of_what_backward_keeps(variant: str) -> None:
    """Factor 2: the estimate counts tensors by kind, not by kernel (a reshape that copies or not, fused attention
    keeping only its log-sum-exp), and adds the logits' gradient, which backward creates but never saves."""
    extra = {"dense": [], "moe": _MOE, "moe-shared": [*_MOE, "model.moe.shared_expert=true"],
             "wide": ["model.vocab_size=4096", "model.hidden=256", "model.mlp_hidden=1024", "model.head_dim=32"],
             "long-gqa": ["data.seq_len=512", "model.max_seq_len=512", "train.batch_size=1", "model.n_heads=4",
                          "model.n_kv_heads=2"],
             "gated": ["model.gated_attn=true"]}[variant]
    cfg = load_config("configs/tiny-dense.toml", [*_SHAPES, *extra])
    estimated, measured = memory.estimate(cfg).activations, _saved_for_backward(cfg)
    assert measured / 2 <= estimated <= 2 * measured, (estimated, measured)


def test_a_run_that_cannot_fit_is_refused_before_allocating(text_corpus: Path, tmp_path: Path, capsys) -> None:
    """Issue 22 (5): model.hidden=100000 filled the machine's RAM and was killed by the kernel without a word."""
    out, hidden = tmp_path / "run", 10_000_000
    sets = [*tiny_overrides(text_corpus, tmp_path / "cache"), f"model.hidden={hidden}", "model.n_heads=4",
            "model.n_kv_heads=2", "model.head_dim=16"]
    need = memory.estimate(load_config("configs/tiny-dense.toml", sets))
    assert need.parameters >= 2 * 512 * hidden * 4  # embedding and head alone: 2 · vocab · hidden fp32 values
    limit, what = memory.available_memory(torch.device("cpu"))
    if need.total <= limit:
        pytest.skip(f"this machine has {limit / memory.GiB:.0f} GiB available")
    capsys.readouterr()
    rc = main(argv(sets, out))
    assert_one_line_error(rc, capsys.readouterr().err, "needs about", f"{need.total / memory.GiB:.2f} GiB",
                          f"{limit / memory.GiB:.2f} GiB", what, "train.batch_size", "--skip-memory-check")
    assert not out.exists()


def test_skip_memory_check_starts_anyway(text_corpus: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda device: (1024, "a pretend limit"))
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 1})
    capsys.readouterr()
    assert_one_line_error(main(argv(sets, tmp_path / "a")), capsys.readouterr().err, "a pretend limit")
    assert main(argv(sets, tmp_path / "b", "--skip-memory-check")) == 0


def test_out_of_memory_while_training_is_one_line(text_corpus: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """A real failed allocation (torch's CPU allocator refusing 2**60 bytes) in the middle of a step."""
    original = Trainer._losses

    def losses(self, inputs, targets):
        if self.state.step == 1:
            torch.empty(2**60, dtype=torch.uint8)
        return original(self, inputs, targets)

    monkeypatch.setattr(Trainer, "_losses", losses)
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 3})
    capsys.readouterr()
    rc = main(argv(sets, tmp_path / "run"))
    assert_one_line_error(rc, capsys.readouterr().err, "out of memory", "can't allocate memory", "train.batch_size",
                          "train.activation_checkpointing")
