"""``train.init_from = "<dir>"``: continue pretraining (or fine-tune) from a transformers checkpoint directory.

The directory is a ``save_pretrained`` folder of ``Qwen3ForCausalLM`` or ``Qwen3MoeForCausalLM`` (anyone's, read
offline) or one of our exports (``hyperp_moe``, read with this package's classes, never the folder's code). Its
``config.json`` decides the architecture; the run config keeps everything about training, including
``model.parameterization``: under ``"hyperp"`` the checkpoint's o_proj / down_proj are divided by the residual
multiplier 1/√(2L) (:func:`models.hf.load_hf_state`), so the loaded model computes the checkpoint's logits exactly.
MuonH / AdamH take each sphere's radius R = ‖W‖_F at their first step (``hyperp.optim.sphere.init_radius``): a run
started here keeps the norms of the loaded weights, not those of a fresh init.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch

from hyperp.errors import ConfigError
from models.config import ModelConfig
from models.hf import config_from_hf, load_hf_state, register_remote_classes
from models.qwen3 import Qwen3
from train.config import RunConfig

MODEL_TYPES = ("qwen3", "qwen3_moe", "hyperp_moe")
# what the checkpoint decides; the rest of [model] (parameterization, max_seq_len, init stds) stays the run's
ARCHITECTURE = ("vocab_size", "hidden", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_hidden",
                "tie_embeddings", "rope_theta", "norm_eps", "decoder_sparse_step", "mlp_only_layers")
MOE_ARCHITECTURE = ("num_experts", "top_k", "expert_hidden", "gate", "shared_expert", "shared_hidden", "shared_mix")


def _hf_config(directory: str):  # -> transformers.PreTrainedConfig
    from transformers import AutoConfig

    if not (Path(directory) / "config.json").is_file():
        raise ConfigError(f"train.init_from={directory!r} has no config.json (a save_pretrained directory is needed)")
    register_remote_classes()
    try:
        hf_cfg = AutoConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"train.init_from={directory!r}: {str(err).strip().splitlines()[0][:200]}") from None
    if hf_cfg.model_type not in MODEL_TYPES:
        raise ConfigError(f"train.init_from={directory!r} is a {hf_cfg.model_type!r} checkpoint; supported: "
                          f"{', '.join(MODEL_TYPES)}")
    return hf_cfg


def _merge(run: ModelConfig, ckpt: ModelConfig) -> ModelConfig:
    """The run's model config with the checkpoint's architecture (MoE training settings stay the run's when the
    run configures an MoE, else the checkpoint's)."""
    moe = ckpt.moe
    if moe is not None and run.moe is not None:
        moe = dataclasses.replace(run.moe, **{k: getattr(ckpt.moe, k) for k in MOE_ARCHITECTURE})
    return dataclasses.replace(run, moe=moe, **{k: getattr(ckpt, k) for k in ARCHITECTURE})


def _differences(run: ModelConfig, merged: ModelConfig) -> list[str]:
    pairs = [(f"model.{k}", getattr(run, k), getattr(merged, k)) for k in ARCHITECTURE]
    if merged.moe is not None:
        pairs += [(f"model.moe.{k}", getattr(run.moe, k, None), getattr(merged.moe, k)) for k in MOE_ARCHITECTURE]
    elif run.moe is not None:
        pairs.append(("model.moe", "set", "none (dense)"))
    return [f"{key} {a!r} → {b!r}" for key, a, b in pairs if a != b]


def resolve_init_from(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the architecture of its ``train.init_from`` checkpoint (unchanged without one); the config keys
    this replaces are named in one warning."""
    directory = cfg.train.init_from
    if not directory:
        return cfg
    merged = _merge(cfg.model, config_from_hf(_hf_config(directory), cfg.model.parameterization))
    changed = _differences(cfg.model, merged)
    if changed:
        warnings.warn(f"train.init_from: the architecture is {directory}'s: {', '.join(changed)}", stacklevel=2)
    tok = Path(directory) / "tokenizer.json"
    if tok.is_file() and Path(cfg.data.tokenizer).resolve() not in (tok.resolve(), tok.parent.resolve()):
        warnings.warn(f"train.init_from has its own tokenizer ({tok}) but data.tokenizer={cfg.data.tokenizer!r}: "
                      f"set data.tokenizer={str(tok.parent)!r} to train on the ids the checkpoint knows", stacklevel=2)
    try:
        return dataclasses.replace(cfg, model=merged)
    except ConfigError as err:  # e.g. data.seq_len longer than the checkpoint allows
        raise ConfigError(f"train.init_from={directory!r}: {err}") from None


def load_init_weights(model: Qwen3, directory: str) -> None:
    """Copy the checkpoint's weights into ``model`` (built from :func:`resolve_init_from`'s config), in its dtype."""
    from transformers import AutoModelForCausalLM

    _hf_config(directory)  # the same checks, and our classes registered for hyperp_moe
    hf = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=torch.float32)
    with torch.no_grad():
        load_hf_state(model, hf.state_dict())
