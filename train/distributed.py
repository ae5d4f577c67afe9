"""Multi-process training on PyTorch's own stack: torchrun, DDP, FSDP2 ``fully_shard``, DTensor, DCP.

``torchrun --nproc_per_node N -m train --config …`` sets RANK / WORLD_SIZE / LOCAL_RANK; :func:`init` opens the
process group (NCCL on CUDA, gloo on CPU) and everything else reads the returned :class:`DistEnv`. A plain
``python -m train`` run never touches torch.distributed and behaves exactly as before.

- Data: rank ``r`` reads slice ``r`` of every global micro-batch (:class:`train.data.BatchSampler`); the global batch
  is ``batch_size × grad_accum × world_size`` sequences. Each rank's loss is the mean over its slice and DDP /
  FSDP average gradients, so a step equals one process over the concatenated batch.
- ``train.parallel = "ddp"``: ``DistributedDataParallel`` around the model. ``"fsdp"``: ``fully_shard`` on every
  transformer block and then the root (parameters become DTensors sharded on dim 0; bf16 compute with fp32
  gradient reduction on CUDA via ``MixedPrecisionPolicy``). The sphere optimizers handle the shards
  (:mod:`hyperp.optim.sharded`); torch's Adam/AdamW handle DTensors natively.
- Gradient accumulation: gradients are all-reduced only in the backward of the last micro-batch of a step
  (:func:`set_grad_sync`; nanoGPT's ``require_backward_grad_sync``, FSDP2's ``set_requires_gradient_sync``).
- Checkpoints: the sharded storage of :mod:`train.checkpoint` (torch.distributed.checkpoint, any world size).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from hyperp.dtypes import at_least_fp32
from hyperp.errors import ConfigError
from hyperp.optim.sharded import full
from train.config import RunConfig

_OWN_GROUP = False  # whether init() opened the process group (and shutdown() may close it)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits. ``active``: a process group is open (torchrun), even with one process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    active: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def mean(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Average scalar tensors over ranks in one collective (what the concatenated batch would give)."""
        if not self.active or not values:
            return values
        names = list(values)
        scalars = [torch.as_tensor(values[n]).detach().reshape(()) for n in names]
        stacked = torch.stack(scalars).to(at_least_fp32(scalars[0].dtype))  # fp64 runs keep fp64 means
        dist.all_reduce(stacked)
        stacked /= self.world_size
        return dict(zip(names, stacked.unbind(), strict=True))

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on some rank (keeps stop decisions collective)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def _collective_device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def env_from_torchrun() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when launched by torchrun (or any launcher setting its variables)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))


def init(cfg: RunConfig) -> DistEnv:
    """Open the process group when launched by torchrun; a plain process gets the inactive single-rank env.

    Re-uses a process group that is already open (tests run several trainings in one worker).
    """
    launched = env_from_torchrun()
    if launched is None:
        return DistEnv()
    rank, world, local_rank = launched
    global _OWN_GROUP
    if not dist.is_initialized():
        _OWN_GROUP = True
        use_cuda = cfg.train.device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    if dist.get_world_size() != world:
        raise ConfigError(f"process group has {dist.get_world_size()} ranks but WORLD_SIZE={world}")
    return DistEnv(rank=dist.get_rank(), world_size=world, local_rank=local_rank, active=True)


def shutdown(env: DistEnv) -> None:
    """Close the process group if :func:`init` opened it (one opened by the caller stays open)."""
    global _OWN_GROUP
    if env.active and _OWN_GROUP and dist.is_initialized():
        dist.destroy_process_group()
        _OWN_GROUP = False


def device_for(env: DistEnv, device: torch.device) -> torch.device:
    """One GPU per rank (LOCAL_RANK) under torchrun."""
    if env.active and device.type == "cuda":
        return torch.device("cuda", env.local_rank)
    return device


# ------------------------------------------------------------------------------------------------ wrapping


def checkpoint_activations(model: nn.Module) -> None:
    """Recompute each transformer block in backward (non-reentrant checkpoint; parameter names unchanged)."""
    from torch.utils.checkpoint import checkpoint

    for block in model.layers:
        inner = block.forward

        def forward(h: torch.Tensor, _inner=inner):  # noqa: ANN202 - returns the block's (h, routing) tuple
            return checkpoint(_inner, h, use_reentrant=False)

        block.forward = forward


def wrap(model: nn.Module, cfg: RunConfig, env: DistEnv, device: torch.device) -> nn.Module:
    """Wrap for data parallelism; returns the module to call in training (the DDP wrapper, or ``model`` itself,
    sharded in place by FSDP2). Build the optimizer over ``model.parameters()`` *after* this call."""
    if not env.active:
        return model
    if cfg.train.parallel == "ddp":
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    bf16 = device.type == "cuda" and cfg.train.dtype in ("auto", "bfloat16")
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for block in model.layers:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def set_grad_sync(train_model: nn.Module, enabled: bool) -> None:
    """Whether the next backward all-reduces gradients: only on the last micro-batch of a step, so accumulation
    costs one reduction per step (nanoGPT sets ``require_backward_grad_sync`` on the last micro-step; it is what
    ``DistributedDataParallel.no_sync`` toggles). The mean over ranks of the summed micro-batch gradients equals
    the sum of per-micro-batch means, up to float summation order."""
    if isinstance(train_model, DistributedDataParallel):
        train_model.require_backward_grad_sync = enabled
    elif isinstance(train_model, FSDPModule):
        train_model.set_requires_gradient_sync(enabled)


def full_norm(value: torch.Tensor) -> torch.Tensor:
    """A total norm that FSDP2's ``clip_grad_norm_`` returns as a DTensor, as a plain tensor."""
    return full(value)
