"""ArchScale-fidelity options of the model (SPEC §7): attention softmax scale, gated attention, logit scale, the
HyperP defaults for RMSNorm eps and RoPE base — each against an explicit computation, plus their transformers export
(folded scales → plain Qwen3; gated attention → the shipped modeling code)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hyperp import OptimConfig, param_groups
from hyperp.errors import ConfigError
from hyperp.roles import Role, collect
from hyperp.transfer import family_scale
from models.config import ModelConfig
from models.hf import export_dir, from_hf, hf_config, to_hf
from models.qwen3 import Qwen3
from tests.models.random_model import build
from moe.config import MoEConfig

VOCAB = 97


def cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=VOCAB, hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32, mlp_hidden=96,
                max_seq_len=32)
    return ModelConfig(**(base | kw))


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        (dict(), math.sqrt(128) / 32),  # HyperP: ArchScale √hd₀/hd with hd₀ = 128
        (dict(head_dim=128), 1 / math.sqrt(128)),  # equal to 1/√hd at hd = 128
        (dict(parameterization="standard"), 1 / math.sqrt(32)),  # Qwen3
        (dict(attn_scale=0.3), 0.3),
    ],
)
def test_attention_scale_closed_form(kw: dict, expected: float) -> None:
    assert Qwen3(cfg(**kw)).layers[0].attn.scale == pytest.approx(expected, rel=1e-12)


def _explicit_attention(attn, x: torch.Tensor, scale: float, gated: bool) -> torch.Tensor:
    """softmax(scale·q·kᵀ + causal mask)·v per head, × σ(x·W_gᵀ) per head, then o_proj — in fp64, by hand."""
    with torch.no_grad():
        q, k = (t.double() for t in attn.queries_keys(x))
        x64 = x.double()
        b, t, _ = x.shape
        h, hkv, d = attn.n_heads, attn.n_kv_heads, attn.head_dim
        v = (x64 @ attn.v_proj.weight.double().T).reshape(b, t, hkv, d).transpose(1, 2)
        k, v = k.repeat_interleave(h // hkv, dim=1), v.repeat_interleave(h // hkv, dim=1)
        logits = scale * q @ k.transpose(-1, -2)
        logits = logits.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        heads = logits.softmax(-1) @ v  # (b, h, t, d)
        if gated:
            gate = torch.sigmoid(x64 @ attn.g_proj.weight.double().T)  # (b, t, h)
            heads = heads * gate.transpose(1, 2).unsqueeze(-1)
        return heads.transpose(1, 2).reshape(b, t, h * d) @ attn.o_proj.weight.double().T


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize(("kw", "scale"), [(dict(), math.sqrt(128) / 32), (dict(attn_scale=0.7), 0.7),
                                          (dict(parameterization="standard"), 1 / math.sqrt(32))])
def test_attention_matches_explicit_softmax_and_gate(gated: bool, kw: dict, scale: float) -> None:
    torch.manual_seed(1)
    attn = Qwen3(cfg(gated_attn=gated, **kw)).layers[0].attn
    with torch.no_grad():
        attn.q_norm.weight.uniform_(1.0, 3.0)  # sharper attention: a wrong scale shows clearly
        attn.k_norm.weight.uniform_(1.0, 3.0)
    x = torch.randn(2, 16, 64)
    with torch.no_grad():
        got = attn(x).double()
    ref = _explicit_attention(attn, x, scale, gated)
    # fp32 forward vs fp64 reference: a few ulps of fp32 per reduction of ≤ 128 terms on O(1) values.
    assert (got - ref).abs().max().item() <= 1e-5
    assert ref.abs().max().item() > 0.05


def test_gate_is_a_declared_sphere_matrix() -> None:
    model = Qwen3(cfg(gated_attn=True))
    assert model.layers[0].attn.g_proj.weight.shape == (4, 64)  # one gate per head (ArchScale g_proj)
    assert collect(model)["layers.0.attn.g_proj.weight"] is Role.MATRIX
    groups = {g["name"]: g for g in param_groups(model, OptimConfig(name="muonh"))}
    assert "layers.1.attn.g_proj.weight" in groups["sphere"]["param_names"]
    assert Qwen3(cfg()).layers[0].attn.g_proj is None


def test_hyperp_defaults_for_norm_eps_and_rope_base() -> None:
    for par, eps, theta in (("hyperp", 1e-5, 1e4), ("standard", 1e-6, 1e6)):
        model = Qwen3(cfg(parameterization=par))
        assert {m.eps for m in model.modules() if type(m).__name__ == "RMSNorm"} == {eps}
        rotary = model.layers[0].attn.rotary
        pos, i = 7, 5  # RoPE angle of position p, pair i: p·θ^(−2i/d)
        assert rotary.cos[pos, i].item() == pytest.approx(math.cos(pos * theta ** (-2 * i / 32)), abs=1e-6)
        hf = hf_config(model.config)
        assert hf.rms_norm_eps == eps and hf.rope_parameters["rope_theta"] == theta
    explicit = Qwen3(cfg(norm_eps=1e-3, rope_theta=500.0))
    assert explicit.norm.eps == 1e-3 and explicit.config.resolved_rope_theta == 500.0


def test_logit_scale_multiplies_the_final_norm_output() -> None:
    plain = build(cfg())
    scaled = Qwen3(cfg(logit_scale=2.5)).eval()
    scaled.load_state_dict(plain.state_dict())
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (scaled(ids).logits - 2.5 * plain(ids).logits).abs().max().item() <= 1e-5


@pytest.mark.parametrize("tie", [False, True])
def test_folded_scales_export_as_plain_qwen3_both_directions(tie: bool) -> None:
    ours = build(cfg(attn_scale=0.3, logit_scale=2.5, tie_embeddings=tie), seed=3)
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(4))
    hf = to_hf(ours)
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    with torch.no_grad():
        ref = ours(ids).logits
        assert (hf(ids).logits - ref).abs().max().item() <= 1e-4
        back = from_hf(hf).eval()  # the scales stay folded: logit scale 1, the HyperP attention scale
        assert (back(ids).logits - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("moe", [False, True])
def test_gated_attention_exports_with_remote_code(tmp_path, moe: bool) -> None:
    from transformers import AutoModelForCausalLM

    kw = dict(moe=MoEConfig(num_experts=4, top_k=2, expert_hidden=32, gate="sqrt")) if moe else {}
    ours = build(cfg(gated_attn=True, logit_scale=1.5, **kw), seed=5)
    with pytest.raises(ConfigError, match="gated"):
        to_hf(ours)
    export_dir(ours, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["gated_attention"] is True and config["num_local_experts"] == (4 if moe else 0)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True, local_files_only=True).eval()
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = ours(ids).logits
        assert ref.abs().max() > 0.1
        assert (loaded(ids).logits - ref).abs().max().item() <= 1e-4
        back = from_hf(loaded).eval()
        assert back.config.gated_attn and (back(ids).logits - ref).abs().max().item() <= 1e-4
        # the gate matters: zeroing it changes the logits (σ(0) = ½ for every head)
        for layer in loaded.model.layers:
            layer.self_attn.g_proj.weight.zero_()
        assert (loaded(ids).logits - ref).abs().max().item() > 1e-3
    out = loaded.generate(ids[:1, :6], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 9)


def test_invalid_fidelity_options_raise() -> None:
    for kw, key in ((dict(attn_scale=0.0), "attn_scale"), (dict(logit_scale=-1.0), "logit_scale"),
                    (dict(gated_attn="yes"), "gated_attn"), (dict(norm_eps=0.0), "norm_eps")):
        with pytest.raises(ConfigError, match=key):
            cfg(**kw)


def _counts(path: str) -> dict[str, int]:
    from models.qwen3 import count_parameters
    from train.config import load_config

    with torch.device("meta"):  # shapes only: the GPU presets would cost real memory
        return count_parameters(Qwen3(load_config(path).model))


@pytest.mark.parametrize(("shared", "plain"), [("configs/tiny-moe-shared.toml", "configs/tiny-moe.toml"),
                                               ("configs/experiments/exp-moe-shared.toml",
                                                "configs/experiments/exp-moe.toml")])
def test_shared_expert_presets_keep_active_and_total_parameters(shared: str, plain: str) -> None:
    """ArchScale's recipe turns one of k slots into the shared expert: same expert budget, same active width."""
    a, b = _counts(shared), _counts(plain)
    router_diff = 2 * 64 * (15 - 8) if "exp" in plain else 4 * 128 * (15 - 8)  # 15 routed vs 8 experts' routers
    assert a["total"] - b["total"] == router_diff
    assert a["active"] - b["active"] == router_diff


def test_family_presets_have_two_heads_per_layer_and_gpu_preset_size() -> None:
    from train.config import load_config

    for depth in (8, 12, 16, 20, 24):
        cfg = load_config(f"configs/d{depth}.toml")
        m = cfg.model
        assert (m.n_heads, m.head_dim, m.hidden) == (2 * depth, 128, 128 * depth)
        # max_steps: ArchScale's default tokens T₀·N/N₀ for this n_head = 2L family, rounded to a whole step.
        step_tokens = cfg.train.batch_size * cfg.train.grad_accum * cfg.data.seq_len
        tokens = family_scale(depth, heads_per_layer=2).tokens
        assert abs(cfg.train.max_steps * step_tokens - tokens) <= step_tokens
    counts = _counts("configs/experiments/gpu/d6.toml")
    assert 20e6 <= counts["non_embedding"] <= 50e6 and load_config("configs/experiments/gpu/d6.toml").model.vocab_size <= 16384
