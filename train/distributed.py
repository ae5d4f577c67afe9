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
- ``train.expert_parallel = n`` (expert parallelism, EP): a 2-D DeviceMesh ``(dp, ep)`` of world/n × n ranks; the
  routed experts of every MoE layer are sharded over the ``ep`` ranks (rank ``(d, e)`` keeps experts
  [e·E/n, (e+1)·E/n), :mod:`moe.expert_parallel`), every other parameter stays data-parallel over all ranks. Every
  rank still reads its own slice of the global batch. Expert gradients: after backward, rank ``(d, e)``'s
  expert gradient already sums the contributions of all tokens of EP row ``d`` (the all-to-all's backward brings
  them home); summing over the ``dp`` ranks that hold the same experts and dividing by the world size gives the
  gradient of the global mean loss, as DDP / FSDP average the dense ones. DDP ignores the experts and
  :func:`reduce_expert_grads` all-reduces them over ``dp``; FSDP shards them over ``dp`` as their own unit whose
  reduce-scatter divides by the world size (torchtitan's ``set_gradient_divide_factor`` for its EP experts).
- Gradient norm and clipping (:func:`clip_grad_norm_`): the norm of the whole gradient, each shard reduced over
  the ranks that shard it (replicas counted once), so the clip factor and the non-finite check agree on every rank.
- Checkpoints: the sharded storage of :mod:`train.checkpoint` (torch.distributed.checkpoint, any world size).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from hyperp.dtypes import at_least_fp32
from hyperp.errors import ConfigError
from hyperp.optim.sharded import global_norm, local
from moe.experts import Experts
from train.config import RunConfig

_OWN_GROUP = False  # whether init() opened the process group (and shutdown() may close it)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits. ``active``: a process group is open (torchrun), even with one process.
    ``mesh``: the (dp, ep) DeviceMesh under expert parallelism, else None."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    active: bool = False
    mesh: DeviceMesh | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def expert_parallel(self) -> int:
        return 1 if self.mesh is None else self.mesh["ep"].size()

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

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` as rank 0 has it, on every rank (in place); itself in one process."""
        if self.active:
            dist.broadcast(tensor, src=0)
        return tensor

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``tensor`` reduced (``"sum"`` or ``"max"``) over all ranks, in place; itself in one process."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return tensor


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
        if cfg.train.expert_parallel > 1:  # like train.parallel, but silently keeping every expert would mislead
            warnings.warn(f"train.expert_parallel={cfg.train.expert_parallel} ignored: expert parallelism needs "
                          "torchrun; this single process keeps every expert", stacklevel=2)
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
    return DistEnv(rank=dist.get_rank(), world_size=world, local_rank=local_rank, active=True,
                   mesh=_expert_mesh(cfg.train.expert_parallel, world))


def _expert_mesh(ep: int, world: int) -> DeviceMesh | None:
    """The (dp, ep) mesh: EP groups are consecutive ranks (within a node when ep ≤ GPUs per node)."""
    if ep == 1:
        return None
    if world % ep:
        raise ConfigError(f"train.expert_parallel={ep} must divide the number of processes ({world})")
    return init_device_mesh(_collective_device().type, (world // ep, ep), mesh_dim_names=("dp", "ep"))


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
    """Wrap for data (and expert) parallelism; returns the module to call in training (the DDP wrapper, or ``model``
    itself, sharded in place by FSDP2). Build the optimizer over ``model.parameters()`` *after* this call."""
    if not env.active:
        return model
    if env.mesh is not None:
        for block in model.layers:
            if block.is_moe:
                block.mlp.shard_experts(env.mesh["ep"])
    if cfg.train.parallel == "ddp":
        if env.mesh is not None:  # reduced over dp by reduce_expert_grads; DDP must neither sync nor broadcast them
            experts = {id(p) for p in expert_parameters(model)}
            names = [n for n, p in model.named_parameters() if id(p) in experts]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    bf16 = device.type == "cuda" and cfg.train.dtype in ("auto", "bfloat16")
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    ignored = set(expert_parameters(model)) if _experts_outside_fsdp(env) else None
    for block in model.layers:
        if env.mesh is not None and block.is_moe and ignored is None:
            experts = fully_shard(block.mlp.experts, mesh=env.mesh["dp"], mp_policy=mp)
            experts.set_gradient_divide_factor(float(env.world_size))  # see the module docstring
        fully_shard(block, mp_policy=mp, ignored_params=ignored)
    fully_shard(model, mp_policy=mp, ignored_params=ignored)
    return model


def _experts_outside_fsdp(env: DistEnv) -> bool:
    """EP with a single data-parallel rank: nothing to shard the experts over, so FSDP leaves them alone and
    :func:`reduce_expert_grads` scales them. (Also sidesteps FSDP2's one-rank branch, which in torch 2.13 divides a
    custom ``gradient_divide_factor`` twice for fp64/fp16 gradients: ``_fsdp_collectives.foreach_reduce``.)"""
    return env.mesh is not None and env.mesh["dp"].size() == 1


def expert_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The routed experts' stacked weights of every MoE layer (sharded over the EP ranks under expert parallelism)."""
    return [p for m in model.modules() if isinstance(m, Experts) for p in m.parameters()]


def reduce_expert_grads(train_model: nn.Module, env: DistEnv) -> None:
    """EP, after the last backward of a step: the expert gradients that DDP ignores (and FSDP when there is one
    ``dp`` rank) summed over the ``dp`` ranks that hold the same experts and divided by the world size (module
    docstring). FSDP shards experts over more ``dp`` ranks itself and did this in backward."""
    ddp = isinstance(train_model, DistributedDataParallel)
    if env.mesh is None or not (ddp or _experts_outside_fsdp(env)):
        return
    params = expert_parameters(train_model.module if ddp else train_model)
    for p in params:
        if p.grad is None:  # experts this rank's row never routed to: a zero gradient, as DDP would reduce
            p.grad = torch.zeros_like(p)
    grads = [local(p.grad) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    if env.mesh["dp"].size() > 1:
        dist.all_reduce(flat, group=env.mesh.get_group("dp"))
    flat /= env.world_size
    for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(part.view_as(g))


def set_grad_sync(train_model: nn.Module, enabled: bool) -> None:
    """Whether the next backward all-reduces gradients: only on the last micro-batch of a step, so accumulation
    costs one reduction per step (nanoGPT sets ``require_backward_grad_sync`` on the last micro-step; it is what
    ``DistributedDataParallel.no_sync`` toggles). The mean over ranks of the summed micro-batch gradients equals
    the sum of per-micro-batch means, up to float summation order."""
    if isinstance(train_model, DistributedDataParallel):
        train_model.require_backward_grad_sync = enabled
    elif isinstance(train_model, FSDPModule):
        train_model.set_requires_gradient_sync(enabled)


def clip_grad_norm_(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale the gradients so that their global norm is at most ``max_norm`` (0: no clipping); return that norm
    before clipping, the same on every rank. ``torch.nn.utils.clip_grad_norm_``'s rule (coefficient
    max_norm / (norm + 1e-6), at most 1) on :func:`hyperp.optim.sharded.global_norm`, which also handles the mix of
    plain tensors and DTensors on different meshes that expert parallelism gives."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = global_norm(grads)
    if max_norm > 0:
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for g in grads:
            local(g).mul_(coef.to(g.dtype))
    return norm
