"""The block a run prints before its first step: what it really uses.

The resolved config (saved as ``RUN_DIR/config.toml``), parameter counts (total / active per token / embedding),
device, dtype and compile mode, tokens per step and in all, and the peak lr of every optimizer group *after* the
HyperP transfer with the factors behind it. The transfer can move the lr far from ``optim.lr``: a 20-step smoke test
of d8 trains on 4e-3 of the base's tokens, so the tokens factor (T/T₀)^-0.32 alone makes its lr 5.8× the base's.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from hyperp.transfer import Derived, Scale
from models.qwen3 import count_parameters
from train.build import Components
from train.config import RunConfig
from train.transfer import base_scale, derive_run, run_scale

_KIND = {"muonh": "MuonH", "adamh": "AdamH", "muon": "Muon", "adam": "Adam", "adamw": "AdamW"}


def _count(n: int) -> str:
    """Exact, with thousands separators: a tiny test model and a billion-parameter one read alike."""
    return f"{n:,}"


def _model_line(cfg: RunConfig, parts: Components) -> str:
    m, counts = cfg.model, count_parameters(parts.model)
    shape = f"{m.n_layers} layers × {m.hidden}"
    if m.moe is not None:
        shape += f", MoE {m.moe.num_experts} experts top-{m.moe.top_k} ({m.moe.gate} gate)"
    return (f"model      {shape}, {m.parameterization} parameterization; parameters {_count(counts['total'])} total, "
            f"{_count(counts['active'])} active per token, {_count(counts['embedding'])} embedding + head")


def _device_line(cfg: RunConfig, parts: Components) -> str:
    params = next(parts.model.parameters()).dtype
    with parts.autocast():
        compute = torch.get_autocast_dtype(parts.device.type) if torch.is_autocast_enabled(parts.device.type) else params
    name = f" ({torch.cuda.get_device_name(parts.device)})" if parts.device.type == "cuda" else ""
    parallel = f", {cfg.train.parallel} × {parts.dist.world_size} ranks" if parts.dist.active else ""
    return (f"device     {parts.device}{name}{parallel}; parameters {str(params).removeprefix('torch.')}, compute "
            f"{str(compute).removeprefix('torch.')}; torch.compile {'on' if cfg.train.compile else 'off'}")


def _tokens_line(cfg: RunConfig, world: int) -> str:
    t = cfg.train
    per_step = t.batch_size * cfg.data.seq_len * t.grad_accum * world
    return (f"tokens     {t.batch_size} seq × {cfg.data.seq_len} tokens × {t.grad_accum} accum × {world} ranks = "
            f"{per_step:,} per step; {t.max_steps:,} steps = {per_step * t.max_steps:,} tokens")


def _factor(name: str, base: float, own: float, factor: float) -> str:
    return f"{name} {base:.3g} → {own:.3g}: ×{factor:.3g}"


def _lr_lines(cfg: RunConfig, parts: Components) -> list[str]:
    world = parts.dist.world_size
    derived: Derived = derive_run(cfg, world)
    base: Scale = base_scale(cfg, world)
    own: Scale = run_scale(cfg, world)
    factors = "; ".join((_factor("depth", base.depth, own.depth, derived.depth_factor),
                         _factor("tokens", base.tokens, own.tokens, derived.tokens_factor),
                         _factor("batch tokens", base.batch_tokens, own.batch_tokens, derived.batch_factor)))
    lines = [f"lr         HyperP transfer ×{derived.transfer_factor:.4g} of optim.lr = {cfg.optim.lr:g} ({factors}; "
             "width and granularity ×1)"]
    for group in parts.optimizer.param_groups:
        n = sum(p.numel() for p in group["params"])
        lines.append(f"  {group['name']:<8} {_KIND.get(group['kind'], group['kind']):<6} peak lr {group['base_lr']:.4g} "
                     f"over {len(group['params'])} tensors ({_count(n)} parameters)")
    t = cfg.train
    lines.append(f"  schedule warmup {t.warmup_steps} steps, {t.decay} decay to {t.min_lr_mult:g} × peak")
    if not 0.5 <= derived.transfer_factor <= 2:
        by_name = {"depth": derived.depth_factor, "tokens": derived.tokens_factor, "batch": derived.batch_factor}
        main = max(by_name, key=lambda k: abs(math.log(by_name[k])))
        lines.append(f"  note: peak lrs are {derived.transfer_factor:.3g}× optim.lr, mostly the {main} factor; "
                     "[hyperp] base_* is the scale optim.lr was tuned at")
    return lines


def run_summary(cfg: RunConfig, parts: Components, run_dir: Path, config_path: str) -> str:
    """The block printed at the start of a run (rank 0)."""
    lines = [f"run        {run_dir} (config {config_path} → resolved {Path(run_dir) / 'config.toml'})",
             _model_line(cfg, parts), _device_line(cfg, parts), _tokens_line(cfg, parts.dist.world_size),
             *_lr_lines(cfg, parts)]
    if cfg.train.init_from:
        lines.append(f"init       weights from {cfg.train.init_from} (sphere radii = their norms)")
    return "\n".join(lines)
