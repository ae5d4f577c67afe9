"""What ``--resume`` does with each config key: the one table, and the check that applies it.

A resumed run is checked against the config saved in its checkpoint, key by key:

- ``MATCH``: the key defines what the checkpoint *is* (model shape, data, tokenizer). Another value is another run:
  one-line error naming the key and both values, suggesting a new ``--out``.
- ``CHANGE``: the key may change on resume and takes effect from the resumed step on (lr, schedule length, cadences,
  monitors, loss weights…). The run says what changed (step log and a ``config_change`` event in metrics.jsonl) and
  ``config.toml`` records the new value.
- ``FIXED``: a training setting the checkpoint's state depends on (batch geometry, optimizer kind, seeds of the
  initial weights): one-line error with the reason.

``tests/train/test_resume_config.py`` checks that every key of :class:`~train.config.RunConfig` is in the table, so
a new config key cannot be added without deciding what a resume does with it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from hyperp.errors import ConfigError


class OnResume(StrEnum):
    MATCH = "must match the checkpoint"
    CHANGE = "may change on resume"
    FIXED = "cannot change on resume"


M, C, F = OnResume.MATCH, OnResume.CHANGE, OnResume.FIXED
_WEIGHTS = "the saved weights have this shape or were made with it"
_DATA = "the token stream the step counter points into"
_OPT_STATE = "the saved optimizer state (momentum, moments, sphere radii) belongs to it"
_GLOBAL_BATCH = "the data position and HyperP's batch factor count in global batches of the checkpoint"

RESUME_RULES: dict[str, tuple[OnResume, str]] = {
    "name": (C, "labels the logs"),
    **{f"model.{k}": (M, _WEIGHTS) for k in (
        "vocab_size", "hidden", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_hidden", "max_seq_len",
        "tie_embeddings", "rope_theta", "norm_eps", "parameterization", "residual_multiplier", "init_std",
        "embed_init_std", "head_init_std", "moe", "decoder_sparse_step", "mlp_only_layers", "attn_scale",
        "gated_attn", "logit_scale", "qk_norm")},
    **{f"model.moe.{k}": (M, _WEIGHTS) for k in (
        "num_experts", "top_k", "expert_hidden", "shared_expert", "shared_hidden", "gate", "shared_mix", "balance")},
    "model.moe.aux_weight": (C, "a loss weight"),
    "model.moe.z_weight": (C, "a loss weight"),
    "model.moe.global_aux": (C, "how the balance loss is averaged"),
    "model.moe.backend": (C, "how experts are dispatched; same numbers"),
    "model.moe.bias_rate": (C, "step size of the balance bias update"),
    "model.moe.balance_target": (F, "the saved balance controller's state steers toward it (moe.controller)"),
    **{f"data.{k}": (M, _DATA) for k in (
        "corpus", "path", "tokenizer", "seq_len", "val_fraction", "doc_separator", "sources", "decode_errors")},
    "data.prefetch": (C, "how many batches are built ahead; the same batches"),
    "data.cache_dir": (C, "where the token cache lives; the tokenizer is checked against the run's saved copy"),
    "data.repeat_token_at": (C, "a fault-injection hook read at the listed steps only"),
    "data.seed": (C, "the order of training windows: change it to reshuffle past a bad batch"),
    "optim.name": (F, _OPT_STATE),
    "optim.expert_sphere": (F, _OPT_STATE),
    "optim.router_on_sphere": (F, _OPT_STATE),
    "optim.head_on_sphere": (F, _OPT_STATE),
    **{f"optim.{k}": (C, "an optimizer hyperparameter: the config's value replaces the checkpoint's") for k in (
        "lr", "adam_lr", "betas", "eps", "weight_decay", "momentum", "ns_steps", "ns_coefficients", "muon_adjust_lr",
        "grad_clip", "weight_decay_mode", "wd_base_depth", "decay_head")},
    "train.batch_size": (F, _GLOBAL_BATCH),
    "train.grad_accum": (F, _GLOBAL_BATCH),
    "train.seed": (F, "it seeds the initial weights only and every generator is restored from the checkpoint; "
                      "change data.seed to reshuffle the data"),
    "train.dtype": (F, "the parameters and optimizer state are stored in it"),
    **{f"train.{k}": (C, "schedule, cadence or limit; read every step") for k in (
        "max_steps", "warmup_steps", "decay", "min_lr_mult", "eval_every", "eval_batches", "ckpt_every",
        "keep_checkpoints", "keep_pinned", "log_every", "max_nonfinite")},
    "train.device": (C, "checkpoints load onto any device"),
    "train.parallel": (C, "FSDP resumes distributed checkpoints only (python -m train.convert the other way)"),
    "train.expert_parallel": (C, "distributed checkpoints reshard the experts to any EP size, or none; a single-file "
                                 "one resumes without EP only"),
    "train.activation_checkpointing": (C, "memory only; same numbers"),
    "train.compile": (C, "how the forward runs; same numbers (tests/train/test_compile.py)"),
    "train.init_from": (C, "the initial weights only: a resume continues from the checkpoint's"),
    "train.eval_per_source": (C, "what each evaluation also reports (val/<source>/...)"),
    **{f"hyperp.{k}": (C, "the HyperP base: the peak lrs are derived again") for k in (
        "base_width", "base_depth", "base_tokens", "base_batch_tokens")},
    **{f"monitor.{k}": (C, "what is watched and when") for k in (
        "every", "on_alarm", "sample_tokens", "expert_tokens", "spike_window", "spike_sigma", "spike_min_history",
        "alarm_start", "z_growth", "rms_growth", "outlier_frac", "expert_max_mean", "aux_below_min",
        "attn_logit_max")},
    **{f"log.{k}": (C, "where metrics go") for k in (
        "wandb", "wandb_project", "wandb_entity", "wandb_group", "wandb_tags", "wandb_name", "progress")},
}


@dataclass(frozen=True)
class ConfigChange:
    key: str
    saved: Any
    current: Any

    def __str__(self) -> str:
        return f"{self.key} {self.saved!r} → {self.current!r}"


def rule(key: str) -> tuple[OnResume, str]:
    """The rule of a dotted config key; a key missing from the table (never, by test) must match, the safe side."""
    return RESUME_RULES.get(key, (OnResume.MATCH, "not classified"))


def differences(saved: Any, current: Any, key: str = "") -> list[ConfigChange]:
    """Every differing leaf key of two config dicts, in key order (a section present on one side only is one key).

    A key the checkpoint's config lacks (it predates the key) counts as the key's default: the behaviour the
    checkpoint was trained with."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out: list[ConfigChange] = []
        for k in sorted(set(saved) | set(current)):
            sub = f"{key}.{k}" if key else k
            out += differences(saved[k] if k in saved else _default(sub), current.get(k), sub)
        return out
    return [] if _same(saved, current) else [ConfigChange(key, saved, current)]


def _default(key: str) -> Any:
    """The dataclass default of a dotted key of RunConfig (None when it has none, or is an unset optional)."""
    from train.config import RunConfig

    cls: Any = RunConfig
    *sections, name = key.split(".")
    for section in sections:
        hint = typing.get_type_hints(cls).get(section)
        inner = [a for a in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(a)]
        if not inner:
            return None
        cls = inner[0]
    found = {f.name: f for f in dataclasses.fields(cls)}.get(name)
    if found is None or found.default_factory is not dataclasses.MISSING:  # a section: compared key by key
        return None
    return None if found.default is dataclasses.MISSING else found.default


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):  # TOML and torch.load give lists for tuples
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


BATCH_KEYS = ("train.batch_size", "train.grad_accum")


def global_batch(config: dict[str, Any], world_size: int) -> tuple[int, int, int]:
    """(batch_size, grad_accum, global batch in sequences) of a config dict at ``world_size`` ranks."""
    train = config.get("train", {})
    batch, accum = (int(train.get(k.split(".")[1], _default(k))) for k in BATCH_KEYS)
    return batch, accum, batch * accum * world_size


def _check_global_batch(saved: dict[str, Any], current: dict[str, Any], where: str, saved_world: int,
                        world: int) -> None:
    """Another world size may re-split the global batch into per-rank batches and accumulation (the data position
    and HyperP's batch factor count global batches); the global batch itself cannot change."""
    (b0, a0, g0), (b1, a1, g1) = global_batch(saved, saved_world), global_batch(current, world)
    if g0 != g1:
        raise ConfigError(f"{where}: the global batch (train.batch_size × train.grad_accum × world size) cannot "
                          f"change on resume ({_GLOBAL_BATCH}): checkpoint {b0}×{a0}×{saved_world} = {g0}, this run "
                          f"{b1}×{a1}×{world} = {g1}; keep {g0}, or start a new run with another --out")


def check_resume(saved: dict[str, Any], current: dict[str, Any], where: str, saved_world: int | None = None,
                 world: int = 1) -> list[ConfigChange]:
    """The ``CHANGE`` keys that differ between the checkpoint's config and this run's; a differing ``MATCH`` or
    ``FIXED`` key raises one ConfigError line (``where`` names the checkpoint). With the checkpoint's world size
    known, ``train.batch_size`` and ``train.grad_accum`` may change as long as the global batch does not."""
    changes = differences(saved, current)
    if saved_world is not None:
        _check_global_batch(saved, current, where, saved_world, world)
    for change in changes:
        kind, why = rule(change.key)
        if change.key in BATCH_KEYS and saved_world is not None:
            continue  # the global batch is unchanged (checked above): a re-split for another world size
        values = f"checkpoint {change.saved!r}, this run {change.current!r}"
        if kind is OnResume.MATCH:
            section = change.key.split(".")[0]
            raise ConfigError(
                f"{where} was written for a different {section} config than this run's: {change.key}: {values} "
                f"({why}); resume with the checkpoint's value, or start a new run with another --out")
        if kind is OnResume.FIXED:
            raise ConfigError(f"{where}: {change.key} cannot change on resume ({why}): {values}; keep "
                              f"{change.saved!r}, or start a new run with another --out")
    return changes
