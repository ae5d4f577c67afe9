"""Learning-rate schedule as a factor of each group's peak lr ``base_lr`` (the HyperP-derived lr, :mod:`train.transfer`).

HyperP (ArchScale ``pretrain.py``) uses no warmup under MuonH and a linear decay to ``min_lr_mult`` × peak.
"""

from __future__ import annotations

import math

import torch

from train.config import TrainConfig


def schedule_factor(step: int, cfg: TrainConfig) -> float:
    """The factor for optimizer step ``step`` (0-based): linear warmup, then decay to ``min_lr_mult`` at the end."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.decay == "constant":
        return 1.0
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.decay == "linear":
        shape = 1.0 - progress
    else:  # cosine
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_mult + (1.0 - cfg.min_lr_mult) * shape


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
