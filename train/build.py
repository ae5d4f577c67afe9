"""Builds the pieces of a run from its config: device, data, model, optimizer (HyperP lrs), MoE balance policy."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from hyperp import CompositeOptimizer, build_optimizer
from hyperp.errors import ConfigError
from models.qwen3 import Qwen3, build_model
from moe.balance import BalancePolicy
from train.config import RunConfig
from train.data import BatchSampler, Prefetcher, PreparedData, prepare
from train.distributed import DistEnv, checkpoint_activations, device_for, wrap
from train.transfer import derive_run


@dataclass
class Components:
    model: Qwen3
    optimizer: CompositeOptimizer
    data: PreparedData
    sampler: BatchSampler | Prefetcher  # data.prefetch > 0: batches built ahead in a thread, on the device
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    dist: DistEnv = DistEnv()  # rank / world size under torchrun (train.distributed)
    train_model: torch.nn.Module | None = None  # what training calls: the DDP wrapper; None → model
    balance: BalancePolicy | None = None  # how an MoE model is balanced (moe.balance); None for a dense model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device='cuda' but no CUDA device is available")
    return torch.device(name)


def run_device(cfg: RunConfig, env: DistEnv = DistEnv()) -> torch.device:
    """The device this process trains on (its local GPU under torchrun)."""
    return device_for(env, resolve_device(cfg.train.device))


def uses_bf16(cfg: RunConfig, device: torch.device) -> bool:
    """bf16 autocast on CUDA (``dtype = "auto"`` or ``"bfloat16"``); fp32 elsewhere or when asked."""
    return cfg.train.dtype == "bfloat16" or (cfg.train.dtype == "auto" and device.type == "cuda")


def autocast_for(cfg: RunConfig, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    if not uses_bf16(cfg, device):
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def param_dtype(cfg: RunConfig) -> torch.dtype:
    """Parameters stay fp32 masters (bf16 comes from autocast / FSDP mixed precision) unless the run is fp64."""
    return torch.float64 if cfg.train.dtype == "float64" else torch.float32


def build_components(cfg: RunConfig, env: DistEnv = DistEnv()) -> Components:
    seed_everything(cfg.train.seed)
    device = run_device(cfg, env)
    if not env.is_main:
        env.barrier()  # rank 0 prepares (tokenizes, caches) first; the others then read its cache
    data = prepare(cfg.data)
    if env.is_main:
        env.barrier()
    sampler = data.loader(cfg.train.batch_size, env.rank, env.world_size, cfg.train.grad_accum, device)
    if data.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {data.vocab_size}")
    # Same seed on every rank: identical initial weights (initialized in fp32, then cast for float64 runs).
    model = build_model(cfg.model).to(device=device, dtype=param_dtype(cfg))
    if cfg.train.activation_checkpointing:
        checkpoint_activations(model)
    train_model = wrap(model, cfg, env, device)  # FSDP2 shards in place: build the optimizer after this
    optimizer = build_optimizer(model, cfg.optim, derive_run(cfg, env.world_size).transfer_factor,
                                depth=cfg.model.n_layers)
    balance = None if cfg.model.moe is None else BalancePolicy(cfg.model.moe, model)
    if balance is not None:
        balance.attach(optimizer)
    return Components(model, optimizer, data, sampler, device, autocast_for(cfg, device), env,
                      None if train_model is model else train_model, balance)
