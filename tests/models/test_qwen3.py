"""Our Qwen3 against transformers' Qwen3ForCausalLM (an independent implementation), plus causality."""

from __future__ import annotations

import pytest
import torch

from hyperp.errors import ConfigError
from models.config import ModelConfig
from models.hf import from_hf, to_hf
from models.qwen3 import Qwen3, count_parameters


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=97, hidden=64, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=16, mlp_hidden=96,
                max_seq_len=32)
    base.update(kw)
    return ModelConfig(**base)


def randomize_norms(model: torch.nn.Module) -> None:
    """Norm gains start at 1; perturb them so a swapped or missing norm weight would show in the logits."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("parameterization", ["hyperp", "standard"])
def test_logits_match_transformers_both_directions(tie: bool, parameterization: str) -> None:
    torch.manual_seed(0)
    ours = Qwen3(tiny(tie_embeddings=tie, parameterization=parameterization)).eval()
    randomize_norms(ours)
    with torch.no_grad():  # HyperP's 1e-4 embedding init would make every logit ~0; use a visible scale
        ours.embed.weight.normal_(std=0.5)
    ids = torch.randint(0, 97, (2, 32))
    hf = to_hf(ours)
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids).logits
    assert ref.abs().max() > 0.1
    assert (got - ref).abs().max().item() <= 1e-4
    back = from_hf(hf, parameterization=parameterization).eval()
    with torch.no_grad():
        assert (back(ids).logits - ref).abs().max().item() <= 1e-4


def test_save_pretrained_round_trip_and_generate(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    ours = Qwen3(tiny()).eval()
    randomize_norms(ours)
    to_hf(ours).save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    ids = torch.randint(0, 97, (1, 8))
    with torch.no_grad():
        assert (loaded(ids).logits - ours(ids).logits).abs().max().item() <= 1e-4
    out = loaded.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 12)


def test_causality_future_tokens_never_change_past_logits() -> None:
    torch.manual_seed(2)
    model = Qwen3(tiny()).eval()
    with torch.no_grad():
        model.embed.weight.normal_(std=0.5)
    ids = torch.randint(0, 97, (1, 20))
    changed = ids.clone()
    changed[0, 11:] = (changed[0, 11:] + 7) % 97
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    assert torch.equal(a[0, :11], b[0, :11])
    assert not torch.allclose(a[0, 11:], b[0, 11:])


def test_residual_multiplier_is_depth_mup() -> None:
    assert Qwen3(tiny(n_layers=8)).layers[0].residual_multiplier == pytest.approx(1 / 4)
    assert Qwen3(tiny(parameterization="standard")).layers[0].residual_multiplier == 1.0


def test_hyperp_init_scales() -> None:
    torch.manual_seed(3)
    model = Qwen3(tiny(vocab_size=4000, hidden=128, n_heads=8, head_dim=16))
    assert model.embed.weight.std().item() == pytest.approx(1e-4, rel=0.05)
    assert model.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.05)
    w = model.layers[0].attn.q_proj.weight  # kaiming-uniform(a=√5) = U(±1/√fan_in)
    assert w.abs().max().item() <= 1 / 128**0.5
    assert w.std().item() == pytest.approx(1 / (3 * 128) ** 0.5, rel=0.05)


def test_parameter_count_closed_form() -> None:
    cfg = tiny()
    attn = cfg.hidden * 16 * (4 + 2 + 2) + 4 * 16 * cfg.hidden + 2 * 16
    mlp = 3 * cfg.hidden * cfg.mlp_hidden
    per_layer = attn + mlp + 2 * cfg.hidden
    expected = cfg.n_layers * per_layer + 2 * cfg.vocab_size * cfg.hidden + cfg.hidden
    counts = count_parameters(Qwen3(cfg))
    assert counts["total"] == expected == counts["active"]


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"hidden": 60, "n_heads": 8, "head_dim": None}, "model.n_heads"),
        ({"n_kv_heads": 3}, "model.n_kv_heads"),
        ({"vocab_size": 0}, "model.vocab_size"),
        ({"mlp_only_layers": (5,)}, "model.mlp_only_layers"),
        ({"parameterization": "mup"}, "model.parameterization"),
    ],
)
def test_bad_config_names_the_field(kw: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as info:
        tiny(**kw)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("qk_norm", [True, False])
def test_qk_norm_bounds_attention_logits_against_weight_growth(qk_norm: bool) -> None:
    """Scaling W_q and W_k by 10: with q/k RMSNorm the logits q·k are unchanged (RMSNorm is scale-invariant up to
    eps; fp64 and eps 1e-30 leave only rounding), without it they grow 10 × 10 = 100× (q, k and RoPE are linear)."""
    torch.manual_seed(0)
    model = Qwen3(tiny(qk_norm=qk_norm, norm_eps=1e-30)).double()
    attn = model.layers[0].attn
    x = torch.randn(2, 8, 64, dtype=torch.float64)

    def logits() -> torch.Tensor:
        q, k = attn.queries_keys(x)
        return q @ k.repeat_interleave(attn.n_heads // attn.n_kv_heads, dim=1).transpose(-1, -2)

    before = logits()
    with torch.no_grad():
        attn.q_proj.weight.mul_(10.0)
        attn.k_proj.weight.mul_(10.0)
    torch.testing.assert_close(logits(), before if qk_norm else 100.0 * before, rtol=1e-12, atol=0.0)
    assert any("q_norm" in n for n, _ in model.named_parameters()) == qk_norm


def test_qk_norm_off_is_refused_by_transformers_export() -> None:
    from models.hf import hf_config

    with pytest.raises(ConfigError, match="qk_norm"):
        hf_config(tiny(qk_norm=False))
