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
- Checkpoints (:func:`save`, :func:`load_into`): a torch.distributed.checkpoint directory per step (model + optimizer
  state keyed by parameter name, resharded on load, so any world size — including a plain single process — can
  resume it) plus ``trainer.pt`` (config, counters, callback state, rng; written by rank 0) and the
  ``manifest.json`` that marks the checkpoint complete. ``python -m train.convert`` turns one into the single-file
  format (and an HF export).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from hyperp.errors import ConfigError
from train.errors import CheckpointError

if TYPE_CHECKING:
    from train.config import RunConfig
    from train.loop import Trainer

DCP_FORMAT = "dcp"
_OWN_GROUP = False  # whether init() opened the process group (and shutdown() may close it)
TRAINER_FILE = "trainer.pt"


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
        stacked = torch.stack([torch.as_tensor(values[n]).detach().float().reshape(()) for n in names])
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
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    bf16 = device.type == "cuda" and cfg.train.dtype != "float32"
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for block in model.layers:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def full_norm(value: torch.Tensor) -> torch.Tensor:
    """A total norm that FSDP2's ``clip_grad_norm_`` returns as a DTensor, as a plain tensor."""
    from hyperp.optim.sharded import full

    return full(value)


# ------------------------------------------------------------------------------------------------ checkpoints


def _optimizers(optimizer: Any) -> list[torch.optim.Optimizer]:
    return list(getattr(optimizer, "optimizers", [optimizer]))


def is_dcp(path: Path) -> bool:
    try:
        return json.loads((Path(path) / "manifest.json").read_text()).get("format") == DCP_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def save(trainer: Trainer) -> Path:
    """Collective: every rank writes its shards into one directory; rank 0 adds trainer.pt and the manifest,
    then renames the directory into place (a crash leaves no checkpoint that looks complete)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from train import checkpoint as ckpt

    env, step = trainer.dist, trainer.state.step
    root = ckpt.checkpoint_dir(trainer.run_dir)
    final, tmp = root / f"step_{step:06d}", root / f".tmp-step_{step:06d}-dcp"
    if env.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    env.barrier()
    model_sd, optim_sd = get_state_dict(trainer.model, _optimizers(trainer.optimizer))
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    if env.is_main:
        extra = trainer.checkpoint_state()
        del extra["model"], extra["optimizer"]  # in the DCP shards
        extra["world_size"] = env.world_size
        ckpt._write_file(tmp / TRAINER_FILE, _to_bytes(extra))
        manifest = {"format": DCP_FORMAT, "step": step, "world_size": env.world_size}
        ckpt._write_file(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
        ckpt._fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        ckpt._fsync_dir(root)
        ckpt._prune(root, trainer.cfg.train.keep_checkpoints)
    env.barrier()
    return final


def _to_bytes(obj: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def read_extra(path: Path) -> dict[str, Any]:
    try:
        return torch.load(Path(path) / TRAINER_FILE, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"distributed checkpoint {path} has no {TRAINER_FILE}") from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a corrupt checkpoint to the user
        raise CheckpointError(f"{Path(path) / TRAINER_FILE} cannot be read: {type(err).__name__}") from None


def load_into(path: Path, model: nn.Module, optimizer: Any) -> dict[str, Any]:
    """Load a DCP checkpoint into ``model`` / ``optimizer`` at this process's world size (plain, DDP-inner or
    FSDP2-sharded modules alike; no process group needed for a single process). Returns trainer.pt's contents."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    extra = read_extra(path)
    optimizers = _optimizers(optimizer)
    # get_state_dict initialises empty optimizer state with a zero-lr step; it runs before the weights are loaded.
    model_sd, optim_sd = get_state_dict(model, optimizers)
    state = {"model": model_sd, "optim": optim_sd}
    try:
        with warnings.catch_warnings():  # a single process reading shards is intended here
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            dcp.load(state, checkpoint_id=str(path))
        set_state_dict(model, optimizers, model_state_dict=state["model"], optim_state_dict=state["optim"])
    except Exception as err:  # noqa: BLE001 - DCP raises several types; the user needs one line
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"distributed checkpoint {path} does not fit this run ({type(err).__name__}: {first})") from None
    return extra


def latest(run_dir: Path) -> Path | None:
    """The newest checkpoint directory of a run if it is a complete DCP checkpoint, else None."""
    from train.checkpoint import list_checkpoints

    found = list_checkpoints(run_dir)
    return found[-1] if found and is_dcp(found[-1]) else None


def resume(trainer: Trainer, path: Path) -> Path:
    """Continue ``trainer`` from DCP checkpoint ``path`` (any world size)."""
    from train.loop import TrainState

    extra = read_extra(path)
    if extra["config"]["model"] != trainer.cfg.to_dict()["model"]:
        raise CheckpointError(f"checkpoint {path} was written for a different model config than this run's")
    load_into(path, trainer.model, trainer.optimizer)
    trainer.load_callback_states(extra["callbacks"])
    trainer.state = TrainState(**extra["trainer"])
    torch.set_rng_state(extra["rng"]["torch"])
    trainer.last_val_loss = extra.get("last_val_loss", float("nan"))
    return path


def model_weights(path: Path) -> dict[str, torch.Tensor]:
    """The full (unsharded) model state dict of a DCP checkpoint, without building a model or optimizer."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        return _load_state_dict_from_keys(keys={"model"}, checkpoint_id=str(path))["model"]


def to_single_file(path: Path) -> dict[str, Any]:
    """A DCP checkpoint as the single-process checkpoint dict (:meth:`train.loop.Trainer.checkpoint_state`)."""
    from hyperp import build_optimizer
    from models.qwen3 import build_model
    from train.transfer import derive_run
    from train.config import RunConfig, build

    extra = read_extra(path)
    cfg = build(RunConfig, extra["config"])
    model = build_model(cfg.model)
    optimizer = build_optimizer(model, cfg.optim, derive_run(cfg, extra.get("world_size", 1)).transfer_factor)
    load_into(path, model, optimizer)
    state = {k: v for k, v in extra.items() if k != "world_size"}
    state["model"] = model.state_dict()
    state["optimizer"] = optimizer.state_dict()
    return state
