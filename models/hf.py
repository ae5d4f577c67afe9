"""Conversion between our Qwen3 models and Hugging Face transformers' ``Qwen3ForCausalLM`` / ``Qwen3MoeForCausalLM``.

Three of our scalars have no HF counterpart and are folded into weights on export (divided out on import), which
leaves the logits unchanged: the residual multiplier into ``o_proj`` / ``down_proj`` (each branch ends in that linear
map); the attention softmax scale s into ``q_norm`` (HF uses 1/√d; q_norm's gain scales q, RoPE is linear, so
gain·s·√d gives the same logits); the logit scale into the final norm's gain.
SqrtGate, shared-expert and gated-attention models have no transformers class: ``to_hf`` refuses them with a
one-line error and ``export_dir`` writes them with their own modeling code (``models/remote``, loaded with
``trust_remote_code=True``; a dense model there is ``num_experts = 0``).

Pure conversion: nothing here reads a run folder (``python -m train.export`` exports a run through ``export_dir``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import Tensor

from hyperp.errors import ConfigError
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
_GATE_MAP = {"attn.g_proj.weight": "self_attn.g_proj.weight"}
_MOE_MAP = {"mlp.router.weight": "mlp.gate.weight", "mlp.experts.w_down": "mlp.experts.down_proj*"}
_SHARED_MAP = {
    "mlp.shared_expert.gate_proj.weight": "mlp.shared_expert.gate_proj.weight",
    "mlp.shared_expert.up_proj.weight": "mlp.shared_expert.up_proj.weight",
    "mlp.shared_expert.down_proj.weight": "mlp.shared_expert.down_proj.weight*",
}
_REMOTE_DIR = Path(__file__).parent / "remote"
_REMOTE_FILES = ("configuration_hyperp_moe.py", "modeling_hyperp_moe.py")
_AUTO_MAP = {
    "AutoConfig": "configuration_hyperp_moe.HyperpMoeConfig",
    "AutoModelForCausalLM": "modeling_hyperp_moe.HyperpMoeForCausalLM",
}


def needs_remote_code(cfg: ModelConfig) -> bool:
    """True when no transformers Qwen3 class can represent the model (SqrtGate, a shared expert, gated attention)."""
    return cfg.gated_attn or (cfg.moe is not None and (cfg.moe.gate != "softmax" or cfg.moe.shared_expert))


def _q_norm_factor(cfg: ModelConfig) -> float:
    """Our softmax scale ÷ transformers' 1/√head_dim: what ``q_norm`` absorbs on export."""
    return cfg.resolved_attn_scale * cfg.resolved_head_dim**0.5


def hf_config(cfg: ModelConfig, remote: bool = False):  # -> transformers.PreTrainedConfig
    """The transformers config with the same architecture as ``cfg``.

    ``remote=True`` gives the ``HyperpMoeConfig`` of the shipped modeling code (any model; dense ones with
    ``num_experts = 0``); otherwise a plain ``Qwen3Config`` / ``Qwen3MoeConfig``, refusing models that need remote code.
    """
    from transformers import Qwen3Config, Qwen3MoeConfig

    if not cfg.qk_norm:  # every Qwen3 attention normalizes q and k; there is no switch to map it to
        raise ConfigError("model.qk_norm=false has no transformers Qwen3 equivalent (its attention always has q/k norms)")

    common = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.mlp_hidden,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.resolved_head_dim,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.resolved_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.resolved_rope_theta},
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        hidden_act="silu",
    )
    if needs_remote_code(cfg) and not remote:
        raise ConfigError(
            "no transformers Qwen3 class has SqrtGate, a shared expert or gated attention (model.gated_attn="
            f"{cfg.gated_attn}, moe.gate={cfg.moe.gate if cfg.moe else None!r}, shared_expert="
            f"{cfg.moe.shared_expert if cfg.moe else False}): use models.hf.export_dir, which ships its own modeling code"
        )
    if cfg.moe is None and not remote:
        return Qwen3Config(**common, architectures=["Qwen3ForCausalLM"])
    moe = dict(
        num_experts=cfg.moe.num_experts if cfg.moe else 0,
        num_experts_per_tok=cfg.moe.top_k if cfg.moe else 1,
        moe_intermediate_size=cfg.moe.expert_hidden if cfg.moe else cfg.mlp_hidden,
        norm_topk_prob=True,
        decoder_sparse_step=cfg.decoder_sparse_step,
        mlp_only_layers=list(cfg.mlp_only_layers),
        router_aux_loss_coef=cfg.moe.aux_weight if cfg.moe else 0.0,
    )
    if not remote:
        return Qwen3MoeConfig(**common, **moe, architectures=["Qwen3MoeForCausalLM"])
    from models.remote.configuration_hyperp_moe import HyperpMoeConfig

    shared = cfg.moe is not None and cfg.moe.shared_expert
    return HyperpMoeConfig(
        **common,
        **moe,
        architectures=["HyperpMoeForCausalLM"],
        auto_map=dict(_AUTO_MAP),
        moe_gate=cfg.moe.gate if cfg.moe else "softmax",
        shared_expert_intermediate_size=cfg.moe.shared_hidden if shared else 0,
        shared_expert_mix=float(cfg.moe.shared_mix) if cfg.moe else 0.5,
        gated_attention=cfg.gated_attn,
    )


def _layer_table(cfg: ModelConfig, is_moe: bool) -> dict[str, str]:
    """Our → HF names of one layer's tensors, except the fused expert gate/up (handled by the callers)."""
    attn = {**_LAYER_MAP, **(_GATE_MAP if cfg.gated_attn else {})}
    if not is_moe:
        return {**attn, **_DENSE_MLP_MAP}
    assert cfg.moe is not None
    return {**attn, **_MOE_MAP, **(_SHARED_MAP if cfg.moe.shared_expert else {})}


def _factor(cfg: ModelConfig, hf_name: str) -> float:
    """What export multiplies an HF-named per-layer tensor by (import divides): the folded scalars."""
    if hf_name.endswith("*"):
        return cfg.resolved_residual_multiplier
    return _q_norm_factor(cfg) if hf_name == "self_attn.q_norm.weight" else 1.0


def _ours_to_hf_state(model: Qwen3) -> dict[str, Tensor]:
    cfg = model.config
    ours = model.state_dict()
    out: dict[str, Tensor] = {"model.embed_tokens.weight": ours["embed.weight"],
                              "model.norm.weight": ours["norm.weight"] * cfg.logit_scale}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = ours["lm_head.weight"]
    for i, block in enumerate(model.layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        for src, dst in _layer_table(cfg, block.is_moe).items():
            out[q + dst.rstrip("*")] = ours[p + src] * _factor(cfg, dst)
        if block.is_moe:  # transformers >= 5 fuses gate and up: (E, 2I, H), gate rows first
            out[q + "mlp.experts.gate_up_proj"] = torch.cat(
                (ours[p + "mlp.experts.w_gate"], ours[p + "mlp.experts.w_up"]), dim=1
            )
    return {k: v.detach().clone() for k, v in out.items()}


def _hf_to_ours_state(hf_state: dict[str, Tensor], model: Qwen3) -> dict[str, Tensor]:
    cfg = model.config
    out: dict[str, Tensor] = {"embed.weight": hf_state["model.embed_tokens.weight"],
                              "norm.weight": hf_state["model.norm.weight"] / cfg.logit_scale}
    out["lm_head.weight"] = hf_state["model.embed_tokens.weight" if cfg.tie_embeddings else "lm_head.weight"]
    for i, block in enumerate(model.layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        for dst, src in _layer_table(cfg, block.is_moe).items():
            out[p + dst] = hf_state[q + src.rstrip("*")] / _factor(cfg, src)
        if block.is_moe:
            gate_up = hf_state[q + "mlp.experts.gate_up_proj"]
            out[p + "mlp.experts.w_gate"], out[p + "mlp.experts.w_up"] = gate_up.chunk(2, dim=1)
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def to_hf(model: Qwen3, remote: bool = False):  # -> Qwen3ForCausalLM | Qwen3MoeForCausalLM | HyperpMoeForCausalLM
    """A transformers model computing the same logits as ``model`` (fp32, eval mode).

    ``remote=True`` builds the shipped ``HyperpMoeForCausalLM`` (needed for SqrtGate / shared expert / gated
    attention); save that with :func:`export_dir` so the directory carries its modeling code.
    """
    from transformers import AutoModelForCausalLM

    config = hf_config(model.config, remote=remote)
    if remote:
        from models.remote.modeling_hyperp_moe import HyperpMoeForCausalLM

        hf = HyperpMoeForCausalLM(config).float()
    else:
        hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = hf.load_state_dict(_ours_to_hf_state(model), strict=False)
    missing = [k for k in missing if not (model.config.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"HF state mismatch: missing={missing[:3]} unexpected={unexpected[:3]}")
    if model.config.tie_embeddings:
        hf.tie_weights()
    return hf.eval()


def config_from_hf(hf_cfg, parameterization: str = "hyperp") -> ModelConfig:
    """Our config for a transformers Qwen3/Qwen3-MoE config (residual multiplier and attention scale from
    ``parameterization``; import divides them out of the weights, so the logits stay those of the checkpoint)."""
    from moe.config import MoEConfig

    rope = getattr(hf_cfg, "rope_parameters", None) or {}
    moe = None
    if getattr(hf_cfg, "num_experts", None):
        shared = int(getattr(hf_cfg, "shared_expert_intermediate_size", 0) or 0)  # HyperpMoeConfig only
        moe = MoEConfig(
            num_experts=hf_cfg.num_experts,
            top_k=hf_cfg.num_experts_per_tok,
            expert_hidden=hf_cfg.moe_intermediate_size,
            gate=getattr(hf_cfg, "moe_gate", "softmax"),
            shared_expert=shared > 0,
            shared_hidden=shared or None,
            shared_mix=float(getattr(hf_cfg, "shared_expert_mix", 0.5)),
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
        gated_attn=bool(getattr(hf_cfg, "gated_attention", False)),  # HyperpMoeConfig only
        parameterization=parameterization,  # type: ignore[arg-type]
        moe=moe,
        decoder_sparse_step=getattr(hf_cfg, "decoder_sparse_step", 1) or 1,
        mlp_only_layers=tuple(getattr(hf_cfg, "mlp_only_layers", ()) or ()),
    )


def from_hf(hf_model, parameterization: str = "hyperp") -> Qwen3:
    """Our model with the same logits as a transformers Qwen3 / Qwen3-MoE / shipped HyperpMoe model."""
    cfg = config_from_hf(hf_model.config, parameterization)
    model = Qwen3(cfg)
    model.load_state_dict(_hf_to_ours_state(hf_model.state_dict(), model), strict=True)
    return model.to(next(hf_model.parameters()).dtype)


def export_dir(model: Qwen3, out_dir: str | Path) -> Path:
    """Write ``model`` as a directory ``AutoModelForCausalLM.from_pretrained`` loads offline.

    Dense and standard-gate MoE models become plain ``Qwen3ForCausalLM`` / ``Qwen3MoeForCausalLM`` checkpoints;
    SqrtGate / shared-expert models get ``models/remote``'s modeling files copied next to ``config.json``, whose
    ``auto_map`` points at them (load with ``trust_remote_code=True``).
    """
    out = Path(out_dir)
    remote = needs_remote_code(model.config)
    to_hf(model, remote=remote).save_pretrained(out)
    if remote:
        for name in _REMOTE_FILES:
            shutil.copyfile(_REMOTE_DIR / name, out / name)
    return out


HF_ARCHITECTURES = ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "HyperpMoeForCausalLM")


def load_export(path: str | Path) -> Qwen3:
    """Our model (fp32, eval mode) from a ``save_pretrained`` directory of one of :data:`HF_ARCHITECTURES` — what
    :func:`export_dir` writes — offline. The shipped modeling code is imported from this package, so a SqrtGate
    export needs no ``trust_remote_code``."""
    import json

    from transformers import AutoModelForCausalLM

    config = Path(path) / "config.json"
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (OSError, ValueError) as err:
        raise ConfigError(f"{config} cannot be read ({type(err).__name__}): not an exported model directory") from None
    if not set(architectures) & set(HF_ARCHITECTURES):
        raise ConfigError(f"{config} describes {architectures}, not one of {', '.join(HF_ARCHITECTURES)}")
    if "HyperpMoeForCausalLM" in architectures:
        from models.remote.modeling_hyperp_moe import HyperpMoeForCausalLM

        hf = HyperpMoeForCausalLM.from_pretrained(path, local_files_only=True)
    else:
        hf = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    return from_hf(hf.float()).eval()


if __name__ == "__main__":  # the run-aware CLI lives with the run tools (models imports nothing from train)
    import sys

    print("error: the export CLI moved: python -m train.export --run runs/NAME --out hf/NAME", file=sys.stderr)
    sys.exit(2)
