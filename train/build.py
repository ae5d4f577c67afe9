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
from train.distributed import DistEnv, checkpoint_activations, device_for, wrap


@dataclass
class Components:
    model: Qwen3
    optimizer: Any
    data: PreparedData
    sampler: BatchSampler
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    lr_scale: float
    dist: DistEnv = DistEnv()  # rank / world size under torchrun (train.distributed)
    train_model: torch.nn.Module | None = None  # what training calls: the DDP wrapper; None → model


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


def run_scale(cfg: RunConfig, world_size: int = 1) -> Scale:
    """A run's point in the HyperP family: width, depth, training tokens, batch tokens, granularity."""
    t = cfg.train
    batch_tokens = float(t.grad_accum * t.batch_size * world_size * cfg.data.seq_len)
    return Scale(width=cfg.model.hidden, depth=cfg.model.n_layers, tokens=batch_tokens * t.max_steps,
                 batch_tokens=batch_tokens, granularity=cfg.model.moe.top_k if cfg.model.moe else 1)


def transfer_scale(cfg: RunConfig, world_size: int = 1) -> float:
    """HyperP lr multiplier from the ``[hyperp]`` base scale to this run's scale (1 when no base is given)."""
    target, h = run_scale(cfg, world_size), cfg.hyperp
    base = Scale(width=h.base_width or target.width, depth=h.base_depth or target.depth,
                 tokens=h.base_tokens or target.tokens, batch_tokens=h.base_batch_tokens or target.batch_tokens,
                 granularity=target.granularity)
    return lr_multiplier(base, target)


def build_components(cfg: RunConfig, env: DistEnv = DistEnv()) -> Components:
    seed_everything(cfg.train.seed)
    device = device_for(env, resolve_device(cfg.train.device))
    if not env.is_main:
        env.barrier()  # rank 0 prepares (tokenizes, caches) first; the others then read its cache
    data = prepare(cfg.data)
    if env.is_main:
        env.barrier()
    sampler = data.sampler(cfg.train.batch_size, env.rank, env.world_size, grad_accum=cfg.train.grad_accum)
    if data.vocab_size > cfg.model.vocab_size:
        from hyperp.errors import ConfigError

        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {data.vocab_size}")
    model = build_model(cfg.model).to(device)  # same seed on every rank: identical initial weights
    if cfg.train.activation_checkpointing:
        checkpoint_activations(model)
    train_model = wrap(model, cfg, env, device)  # FSDP2 shards in place: build the optimizer after this
    lr_scale = transfer_scale(cfg, env.world_size)
    optimizer = build_optimizer(model, cfg.optim, lr_scale=lr_scale, depth=cfg.model.n_layers)
    return Components(model, optimizer, data, sampler, device, autocast_for(cfg, device), lr_scale, env,
                      None if train_model is model else train_model)


def build_callbacks(cfg: RunConfig, run_dir: Path, env: DistEnv = DistEnv()) -> list[Callback]:
    # Monitors come first: they add their metrics to the step's dict before the loggers write it.
    callbacks: list[Callback] = list(monitor_callbacks(cfg.monitor, run_dir))
    if not env.is_main:  # only rank 0 logs; every rank takes part in the (collective) checkpoint save
        return callbacks + [PeriodicCheckpoint(cfg.train.ckpt_every)]
    if cfg.log.progress:
        callbacks.append(ProgressBar(cfg.train.log_every))
    callbacks.append(JSONLLogger(run_dir / "metrics.jsonl", cfg.train.log_every))
    if cfg.log.wandb != "disabled":
        callbacks.append(WandbLogger(cfg.log.wandb, cfg.log.wandb_project, run_dir))
    callbacks.append(PeriodicCheckpoint(cfg.train.ckpt_every))
    return callbacks
