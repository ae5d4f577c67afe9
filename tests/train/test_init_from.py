"""``train.init_from``: start from a transformers checkpoint directory saved by the test (no hub). The reference is
the transformers model itself (its logits, its weights' norms), never our conversion."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hyperp.optim.sphere import frobenius_norm
from tests.conftest import tiny_overrides
from tests.models.test_hf_moe import build, tiny_moe
from tests.runs import CONFIG, argv, assert_one_line_error
from train.__main__ import main
from train.build import build_components
from train.config import load_config
from train.init_from import resolve_init_from
from train.loop import Trainer

LAYERS = 3


def _save_transformers_model(directory: Path, moe: bool):
    """A random Qwen3 / Qwen3-MoE (norm gains ≠ 1) saved with save_pretrained; returns it in eval mode."""
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=512, hidden_size=48, intermediate_size=96, num_hidden_layers=LAYERS,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=12, max_position_embeddings=64,
                  tie_word_embeddings=False)
    if moe:
        model = Qwen3MoeForCausalLM(Qwen3MoeConfig(**common, num_experts=4, num_experts_per_tok=2,
                                                   moe_intermediate_size=32, norm_topk_prob=True))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(**common))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(directory)
    return model.eval()


def _config(corpus: Path, tmp: Path, hf_dir: Path, parameterization: str, **extra: object):
    sets = tiny_overrides(corpus, tmp / "cache", **{"train.init_from": f'"{hf_dir}"', "optim.name": '"muonh"',
                                                    "model.parameterization": f'"{parameterization}"', **extra})
    return resolve_init_from(load_config(CONFIG, sets))


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
@pytest.mark.parametrize("parameterization", ["standard", "hyperp"])
def test_starts_from_the_checkpoint_with_its_logits_and_its_radii(text_corpus: Path, tmp_path: Path, moe: bool,
                                                                  parameterization: str) -> None:
    hf = _save_transformers_model(tmp_path / "hf", moe)
    with pytest.warns(UserWarning, match="the architecture is"):  # tiny-dense's [model] shape is replaced
        cfg = _config(text_corpus, tmp_path, tmp_path / "hf", parameterization)
    assert (cfg.model.hidden, cfg.model.n_layers, cfg.model.mlp_hidden) == (48, LAYERS, 96)
    assert (cfg.model.moe is not None) == moe and cfg.model.parameterization == parameterization
    parts = build_components(cfg)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (parts.model(ids).logits - hf(ids).logits).abs().max().item() <= 1e-4

    mult = 1.0 if parameterization == "standard" else 1 / math.sqrt(2 * LAYERS)
    sphere = next(g for g in parts.optimizer.param_groups if g["name"] == "sphere")
    trainer = Trainer(cfg, tmp_path / "run", parts, [])
    trainer.train_step()  # MuonH takes each radius at its first step
    o_proj = parts.model.layers[0].attn.o_proj.weight
    hf_o = hf.model.layers[0].self_attn.o_proj.weight.detach()
    radius = parts.optimizer.state[o_proj]["radius"]
    assert torch.allclose(radius, torch.linalg.matrix_norm(hf_o) / mult, rtol=1e-6)  # the loaded weight's norm
    for p in sphere["params"]:  # every sphere matrix stays on the sphere of its loaded norm
        assert torch.allclose(frobenius_norm(p.detach()), parts.optimizer.state[p]["radius"], rtol=1e-5)


def test_cli_trains_from_our_sqrtgate_export_without_running_its_code(text_corpus: Path, tmp_path: Path,
                                                                     capsys) -> None:
    from models.hf import export_dir

    ours = build(tiny_moe(gate="sqrt", shared=True, vocab_size=512), seed=3)
    export_dir(ours, tmp_path / "hf")
    (tmp_path / "hf" / "modeling_hyperp_moe.py").write_text("raise RuntimeError('the folder code ran')\n")
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.init_from": f'"{tmp_path / "hf"}"',
                                                               "train.max_steps": 2})
    assert main(argv(sets, tmp_path / "run")) == 0
    out = capsys.readouterr()
    assert f"init       weights from {tmp_path / 'hf'}" in out.out
    assert "warning: train.init_from: the architecture is" in out.err and "model.moe.gate" in out.err
    saved = load_config(tmp_path / "run" / "config.toml")
    assert saved.model.moe.gate == "sqrt" and saved.model.moe.shared_expert and saved.model.n_layers == 6


@pytest.mark.parametrize("case", ["missing", "llama"])
def test_a_directory_that_is_not_a_qwen3_checkpoint_is_one_line(text_corpus: Path, tmp_path: Path, capsys,
                                                                 case: str) -> None:
    hf_dir = tmp_path / "hf"
    if case == "llama":
        from transformers import LlamaConfig

        LlamaConfig(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(hf_dir)
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.init_from": f'"{hf_dir}"'})
    rc = main(argv(sets, tmp_path / "run"))
    needle = "has no config.json" if case == "missing" else "is a 'llama' checkpoint"
    assert_one_line_error(rc, capsys.readouterr().err, "train.init_from=", needle)
    assert not (tmp_path / "run").exists()
