"""Builds the pieces of a run from its config: device, data, model, optimizer (with HyperP lr transfer), callbacks."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hyperp import build_optimizer
from hyperp.transfer import Scale, lr_multiplier
from models.qwen3 import Qwen3, build_model
from train.callbacks import Callback, JSONLLogger, PeriodicCheckpoint, ProgressBar, WandbLogger
from train.config import RunConfig
from train.monitors import monitor_callbacks
from train.data import BatchSampler, PreparedData, prepare


@dataclass
class Components:
    model: Qwen3
    optimizer: Any
    data: PreparedData
    sampler: BatchSampler
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    lr_scale: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from hyperp.errors import ConfigError

        raise ConfigError("train.device='cuda' but no CUDA device is available")
    return torch.device(name)


def autocast_for(cfg: RunConfig, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast on CUDA (``dtype = "auto"`` or ``"bfloat16"``); fp32 elsewhere or when asked."""
    use_bf16 = cfg.train.dtype == "bfloat16" or (cfg.train.dtype == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def run_scale(cfg: RunConfig) -> Scale:
    """A run's point in the HyperP family: width, depth, training tokens, batch tokens, granularity."""
    t = cfg.train
    batch_tokens = float(t.grad_accum * t.batch_size * cfg.data.seq_len)
    return Scale(width=cfg.model.hidden, depth=cfg.model.n_layers, tokens=batch_tokens * t.max_steps,
                 batch_tokens=batch_tokens, granularity=cfg.model.moe.top_k if cfg.model.moe else 1)


def transfer_scale(cfg: RunConfig) -> float:
    """HyperP lr multiplier from the ``[hyperp]`` base scale to this run's scale (1 when no base is given)."""
    target, h = run_scale(cfg), cfg.hyperp
    base = Scale(width=h.base_width or target.width, depth=h.base_depth or target.depth,
                 tokens=h.base_tokens or target.tokens, batch_tokens=h.base_batch_tokens or target.batch_tokens,
                 granularity=target.granularity)
    return lr_multiplier(base, target)


def build_components(cfg: RunConfig) -> Components:
    seed_everything(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    data = prepare(cfg.data)
    sampler = data.sampler(cfg.train.batch_size, grad_accum=cfg.train.grad_accum)
    if data.vocab_size > cfg.model.vocab_size:
        from hyperp.errors import ConfigError

        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {data.vocab_size}")
    model = build_model(cfg.model).to(device)
    lr_scale = transfer_scale(cfg)
    optimizer = build_optimizer(model, cfg.optim, lr_scale=lr_scale)
    return Components(model, optimizer, data, sampler, device, autocast_for(cfg, device), lr_scale)


def build_callbacks(cfg: RunConfig, run_dir: Path) -> list[Callback]:
    # Monitors come first: they add their metrics to the step's dict before the loggers write it.
    callbacks: list[Callback] = list(monitor_callbacks(cfg.monitor, run_dir))
    if cfg.log.progress:
        callbacks.append(ProgressBar(cfg.train.log_every))
    callbacks.append(JSONLLogger(run_dir / "metrics.jsonl", cfg.train.log_every))
    if cfg.log.wandb != "disabled":
        callbacks.append(WandbLogger(cfg.log.wandb, cfg.log.wandb_project, run_dir))
    callbacks.append(PeriodicCheckpoint(cfg.train.ckpt_every))
    return callbacks
