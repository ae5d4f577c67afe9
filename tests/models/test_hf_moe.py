"""MoE interop: standard-gate MoE ↔ transformers' Qwen3MoeForCausalLM, SqrtGate / shared-expert exports with shipped
modeling code (trust_remote_code). All offline, fp32, tiny (the export CLI over a run: tests/train/test_export.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from hyperp.errors import ConfigError
from models.config import ModelConfig
from models.hf import export_dir, from_hf, to_hf
from models.qwen3 import Qwen3
from tests.models.random_model import build
from moe.config import MoEConfig

VOCAB = 97


def tiny_moe(gate: str = "softmax", shared: bool = False, **kw) -> ModelConfig:
    """6 layers, sparse every 2nd layer with layer 3 forced dense: MoE layers are 1 and 5, dense 0, 2, 3, 4."""
    base = dict(vocab_size=VOCAB, hidden=64, n_layers=6, n_heads=4, n_kv_heads=2, head_dim=16, mlp_hidden=96,
                max_seq_len=32, decoder_sparse_step=2, mlp_only_layers=(3,),
                moe=MoEConfig(num_experts=8, top_k=2, expert_hidden=32, gate=gate, shared_expert=shared,
                              shared_hidden=40 if shared else None))
    base.update(kw)
    return ModelConfig(**base)


def assert_clear_topk(model: Qwen3, ids: torch.Tensor) -> None:
    """Implementations pick the top-k by different (equivalent) routes; near-ties could flip under 1e-7 noise.

    Seeds are fixed, so this only guards against a seed that would make the comparison meaningless.
    """
    with torch.no_grad():
        routing = model(ids).routing
    k = model.config.moe.top_k
    for stats in routing:
        top = stats.logits.topk(k + 1, dim=-1).values
        assert (top[:, k - 1] - top[:, k]).min().item() > 1e-4, "near-tie in top-k routing: pick another seed"


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("tie", [False, True])
def test_moe_logits_and_router_logits_match_transformers_both_directions(tie: bool) -> None:
    ours = build(tiny_moe(tie_embeddings=tie))
    assert [b.is_moe for b in ours.layers] == [False, True, False, False, False, True]
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    assert_clear_topk(ours, ids)
    hf = to_hf(ours)
    assert type(hf).__name__ == "Qwen3MoeForCausalLM"
    with torch.no_grad():
        ref = hf(ids, output_router_logits=True)
        got = ours(ids)
    assert ref.logits.abs().max() > 0.1
    assert max_diff(got.logits, ref.logits) <= 1e-4
    assert len(ref.router_logits) == len(got.routing) == 2
    for hf_logits, stats in zip(ref.router_logits, got.routing):
        assert hf_logits.shape == stats.logits.shape == (32, 8)
        assert max_diff(hf_logits, stats.logits) <= 1e-5
    back = from_hf(hf).eval()
    assert back.config.moe.gate == "softmax" and back.config.mlp_only_layers == (3,)
    with torch.no_grad():
        again = back(ids)
    assert max_diff(again.logits, ref.logits) <= 1e-4
    for hf_logits, stats in zip(ref.router_logits, again.routing):
        assert max_diff(hf_logits, stats.logits) <= 1e-5


def test_moe_save_pretrained_round_trip_and_generate(tmp_path) -> None:
    """transformers >= 5 fuses experts in memory but writes per-expert keys; loading must fuse them back."""
    from transformers import AutoModelForCausalLM

    ours = build(tiny_moe(), seed=2)
    export_dir(ours, tmp_path)
    assert not list(tmp_path.glob("*.py"))  # representable: no remote code
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.layers.1.mlp.experts.7.gate_proj.weight" in keys
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    ids = torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(3))
    assert_clear_topk(ours, ids)
    with torch.no_grad():
        assert max_diff(loaded(ids).logits, ours(ids).logits) <= 1e-4
    out = loaded.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 12)


@pytest.mark.parametrize(("gate", "shared"), [("sqrt", False), ("sqrt", True), ("softmax", True)])
def test_remote_code_export_matches_and_generates(tmp_path, gate: str, shared: bool) -> None:
    from transformers import AutoModelForCausalLM

    ours = build(tiny_moe(gate=gate, shared=shared), seed=4)
    export_dir(ours, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "hyperp_moe" and config["moe_gate"] == gate
    assert config["shared_expert_intermediate_size"] == (40 if shared else 0)
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModelForCausalLM"}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True, local_files_only=True).eval()
    assert type(loaded).__name__ == "HyperpMoeForCausalLM"
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(5))
    assert_clear_topk(ours, ids)
    with torch.no_grad():
        ref = ours(ids).logits
        assert ref.abs().max() > 0.1
        assert max_diff(loaded(ids).logits, ref) <= 1e-4
        assert max_diff(from_hf(loaded).eval()(ids).logits, ref) <= 1e-4
    out = loaded.generate(ids[:1, :6], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 9)


@pytest.mark.parametrize(("gate", "shared"), [("sqrt", False), ("softmax", True)])
def test_plain_to_hf_refuses_what_it_cannot_represent(gate: str, shared: bool) -> None:
    with pytest.raises(ConfigError, match="export_dir") as info:
        to_hf(Qwen3(tiny_moe(gate=gate, shared=shared)))
    assert "\n" not in str(info.value)


def test_selection_bias_export_routes_by_unbiased_logits() -> None:
    """HF's Qwen3-MoE has no selection bias: the export equals our model with the bias removed (documented)."""
    from models.config import ModelConfig
    from models.hf import to_hf
    from models.qwen3 import Qwen3
    from moe.config import MoEConfig

    torch.manual_seed(7)
    moe = MoEConfig(num_experts=4, top_k=2, expert_hidden=16, gate="softmax", balance="bias")
    cfg = ModelConfig(vocab_size=61, hidden=32, n_layers=2, n_heads=2, n_kv_heads=1, mlp_hidden=48, moe=moe,
                      max_seq_len=16, parameterization="standard")
    ours = Qwen3(cfg).eval()
    ids = torch.randint(0, 61, (2, 16))
    with torch.no_grad():
        hf = to_hf(ours).eval()
        assert (hf(ids).logits - ours(ids).logits).abs().max() <= 1e-4  # zero bias: identical
        for block in ours.layers:
            block.mlp.router.selection_bias.copy_(torch.tensor([3.0, -3.0, 0.0, 0.0]))
        biased = ours(ids).logits
        assert (hf(ids).logits - biased).abs().max() > 1e-3  # the bias changed our selection, not HF's
        for block in ours.layers:
            block.mlp.router.selection_bias.zero_()
        assert (hf(ids).logits - ours(ids).logits).abs().max() <= 1e-4
