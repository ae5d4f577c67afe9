"""Conversion between our Qwen3 models and Hugging Face transformers' ``Qwen3ForCausalLM`` / ``Qwen3MoeForCausalLM``.

Our residual multiplier has no HF counterpart; because each branch ends in a linear map (``o_proj``, ``down_proj``)
it is folded into those weights on export and divided out on import, which leaves the logits unchanged.
SqrtGate and shared-expert MoE models have no transformers class: ``to_hf`` refuses them with a one-line error.

CLI: ``python -m models.hf export --run RUN_DIR --out HF_DIR``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from hyperp.errors import ConfigError, HyperpError
from models.config import ModelConfig
from models.qwen3 import Qwen3

# our per-layer name → HF per-layer name; the residual multiplier is folded into the `*` entries.
_LAYER_MAP = {
    "input_norm.weight": "input_layernorm.weight",
    "post_attn_norm.weight": "post_attention_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight*",
    "attn.q_norm.weight": "self_attn.q_norm.weight",
    "attn.k_norm.weight": "self_attn.k_norm.weight",
}
_DENSE_MLP_MAP = {
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight*",
}


def hf_config(cfg: ModelConfig):  # -> transformers.PretrainedConfig
    """The transformers config with the same architecture as ``cfg``."""
    from transformers import Qwen3Config, Qwen3MoeConfig

    common = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.mlp_hidden,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.resolved_head_dim,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        hidden_act="silu",
    )
    if cfg.moe is None:
        return Qwen3Config(**common, architectures=["Qwen3ForCausalLM"])
    _check_exportable(cfg)
    return Qwen3MoeConfig(
        **common,
        architectures=["Qwen3MoeForCausalLM"],
        num_experts=cfg.moe.num_experts,
        num_experts_per_tok=cfg.moe.top_k,
        moe_intermediate_size=cfg.moe.expert_hidden,
        norm_topk_prob=True,
        decoder_sparse_step=cfg.decoder_sparse_step,
        mlp_only_layers=list(cfg.mlp_only_layers),
        router_aux_loss_coef=cfg.moe.aux_weight,
    )


def _check_exportable(cfg: ModelConfig) -> None:
    assert cfg.moe is not None
    if cfg.moe.gate != "softmax" or cfg.moe.shared_expert:
        raise ConfigError(
            "Qwen3MoeForCausalLM has neither SqrtGate nor a shared expert: "
            f"model.moe.gate={cfg.moe.gate!r}, shared_expert={cfg.moe.shared_expert} cannot be exported to it"
        )


def _ours_to_hf_state(model: Qwen3) -> dict[str, Tensor]:
    cfg = model.config
    ours = model.state_dict()
    mult = cfg.resolved_residual_multiplier
    out: dict[str, Tensor] = {"model.embed_tokens.weight": ours["embed.weight"], "model.norm.weight": ours["norm.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = ours["lm_head.weight"]
    for i, block in enumerate(model.layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        table = dict(_LAYER_MAP) if block.is_moe else {**_LAYER_MAP, **_DENSE_MLP_MAP}
        for src, dst in table.items():
            w = ours[p + src]
            out[q + dst.rstrip("*")] = w * mult if dst.endswith("*") else w
        if block.is_moe:
            out[q + "mlp.gate.weight"] = ours[p + "mlp.router.weight"]
            out[q + "mlp.experts.gate_up_proj"] = torch.cat(
                (ours[p + "mlp.experts.w_gate"], ours[p + "mlp.experts.w_up"]), dim=1
            )
            out[q + "mlp.experts.down_proj"] = ours[p + "mlp.experts.w_down"] * mult
    return {k: v.detach().clone() for k, v in out.items()}


def _hf_to_ours_state(hf_state: dict[str, Tensor], model: Qwen3) -> dict[str, Tensor]:
    cfg = model.config
    mult = cfg.resolved_residual_multiplier
    out: dict[str, Tensor] = {"embed.weight": hf_state["model.embed_tokens.weight"], "norm.weight": hf_state["model.norm.weight"]}
    out["lm_head.weight"] = hf_state["model.embed_tokens.weight" if cfg.tie_embeddings else "lm_head.weight"]
    for i, block in enumerate(model.layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        table = dict(_LAYER_MAP) if block.is_moe else {**_LAYER_MAP, **_DENSE_MLP_MAP}
        for dst, src in table.items():
            w = hf_state[q + src.rstrip("*")]
            out[p + dst] = w / mult if src.endswith("*") else w
        if block.is_moe:
            out[p + "mlp.router.weight"] = hf_state[q + "mlp.gate.weight"]
            gate_up = hf_state[q + "mlp.experts.gate_up_proj"]
            out[p + "mlp.experts.w_gate"], out[p + "mlp.experts.w_up"] = gate_up.chunk(2, dim=1)
            out[p + "mlp.experts.w_down"] = hf_state[q + "mlp.experts.down_proj"] / mult
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def to_hf(model: Qwen3):  # -> Qwen3ForCausalLM | Qwen3MoeForCausalLM
    """A transformers model computing the same logits as ``model`` (fp32, eval mode)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_config(hf_config(model.config), dtype=torch.float32)
    missing, unexpected = hf.load_state_dict(_ours_to_hf_state(model), strict=False)
    missing = [k for k in missing if not (model.config.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"HF state mismatch: missing={missing[:3]} unexpected={unexpected[:3]}")
    if model.config.tie_embeddings:
        hf.tie_weights()
    return hf.eval()


def config_from_hf(hf_cfg, parameterization: str = "hyperp") -> ModelConfig:
    """Our config for a transformers Qwen3/Qwen3-MoE config (residual multiplier from ``parameterization``)."""
    from moe.config import MoEConfig

    rope = getattr(hf_cfg, "rope_parameters", None) or {}
    moe = None
    if getattr(hf_cfg, "num_experts", None):
        moe = MoEConfig(
            num_experts=hf_cfg.num_experts,
            top_k=hf_cfg.num_experts_per_tok,
            expert_hidden=hf_cfg.moe_intermediate_size,
            gate="softmax",
            aux_weight=float(getattr(hf_cfg, "router_aux_loss_coef", 0.0) or 0.0),
        )
        if not getattr(hf_cfg, "norm_topk_prob", True):
            raise ConfigError("only norm_topk_prob=True Qwen3-MoE checkpoints can be imported")
    return ModelConfig(
        vocab_size=hf_cfg.vocab_size,
        hidden=hf_cfg.hidden_size,
        n_layers=hf_cfg.num_hidden_layers,
        n_heads=hf_cfg.num_attention_heads,
        n_kv_heads=hf_cfg.num_key_value_heads,
        head_dim=getattr(hf_cfg, "head_dim", None),
        mlp_hidden=hf_cfg.intermediate_size,
        max_seq_len=hf_cfg.max_position_embeddings,
        tie_embeddings=bool(hf_cfg.tie_word_embeddings),
        rope_theta=float(rope.get("rope_theta", getattr(hf_cfg, "rope_theta", 1e6))),
        norm_eps=hf_cfg.rms_norm_eps,
        parameterization=parameterization,  # type: ignore[arg-type]
        moe=moe,
        decoder_sparse_step=getattr(hf_cfg, "decoder_sparse_step", 1) or 1,
        mlp_only_layers=tuple(getattr(hf_cfg, "mlp_only_layers", ()) or ()),
    )


def from_hf(hf_model, parameterization: str = "hyperp") -> Qwen3:
    """Our model with the same logits as a transformers Qwen3 / Qwen3-MoE model."""
    cfg = config_from_hf(hf_model.config, parameterization)
    model = Qwen3(cfg)
    model.load_state_dict(_hf_to_ours_state(hf_model.state_dict(), model), strict=True)
    return model.to(next(hf_model.parameters()).dtype)


def export(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a ``save_pretrained`` directory (model + tokenizer) from a training run's latest checkpoint."""
    from train.checkpoint import load_model_from_run

    model, tokenizer = load_model_from_run(Path(run_dir))
    out = Path(out_dir)
    to_hf(model).save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save(out)
    return out


def main(argv: list[str] | None = None, run: Callable[..., Path] = export) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.hf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="export a run's latest checkpoint as a transformers directory")
    ex.add_argument("--run", required=True, help="training run directory (runs/NAME)")
    ex.add_argument("--out", required=True, help="output directory for save_pretrained")
    args = parser.parse_args(argv)
    try:
        out = run(args.run, args.out)
    except HyperpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
