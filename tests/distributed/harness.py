"""The distributed test harness: run configs, one spawn of gloo CPU workers running many jobs, and the comparisons.

Process start-up dominates on a 2-core machine, so every world size spawns its workers once and each worker runs a
list of jobs in turn (trainings through ``train.__main__.run``, which re-uses the open process group, and the small
collective checks of :mod:`tests.distributed.jobs`). The bounds of the comparisons are derived in the docstring of
``tests/distributed/test_distributed.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from tests.conftest import tiny_overrides
from tests.runs import series

STEPS = 5
PARALLEL = ("ddp", "fsdp")
OPTIMS = ("adamw", "muonh", "adamh")
ARCHS = ("dense", "moe")
MONITOR_EVERY = 2  # monitors collected at steps 2 and 4 where runs compare them
LOSS_RTOL = 1e-10  # per-step loss, aux, z, gradient norm (see test_distributed's docstring)
W_ATOL, W_RTOL = 1e-10, 1e-8  # final weights
SERIES = ("train/loss", "train/grad_norm", "moe/aux_loss", "moe/z_loss")
# (batch_size, grad_accum) per rank giving the global batch of 8 windows as 2 global micro-batches of 4 (MoE: the
# global aux loss's gradient depends on the micro-batch split, so every MoE run and its reference share it).
MOE_SPLIT = {1: (4, 2), 2: (2, 2), 4: (1, 2)}

Job = tuple[str, str, list[str]]  # (kind, name, argv): kind "train", "copy" (argv = [src, dst]) or a jobs.JOBS key


def run_sets(corpus: Path, cache: Path, arch: str, optim: str, world: int, **extra: object) -> list[str]:
    """A 5-step fp64 run of ``world`` ranks whose global batch is 8 windows (``arch``: dense, moe, moebias)."""
    batch, accum = (8 // world, 1) if arch == "dense" and world == 1 else MOE_SPLIT[world]
    extra = {"train.batch_size": batch, "train.grad_accum": accum, **extra}
    if arch == "moebias":  # aux-loss-free balancing: the bias update reads the all-reduced counts
        extra = {"model.moe.balance": '"bias"', "model.moe.bias_rate": 0.05, **extra}
    if arch != "dense":  # every MoE term under DP and EP: a shared expert (dense, outside the exchanges) and z-loss
        extra = {"model.moe.shared_expert": "true", "model.moe.z_weight": 1e-3, **extra}
    return tiny_overrides(corpus, cache, moe=arch.startswith("moe"), **{
        "optim.name": f'"{optim}"', "train.max_steps": STEPS, "train.eval_every": STEPS,
        "train.eval_batches": 1, "train.ckpt_every": 100, "train.dtype": '"float64"', "train.device": '"cpu"',
        "monitor.every": 0, **extra})


# ------------------------------------------------------------------------------------------------ spawning


def _worker(rank: int, world: int, port: int, jobs: list[Job], out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # opened here, so train.distributed.init re-uses it across jobs
    from tests.distributed.jobs import JOBS
    from train.__main__ import run

    try:
        for kind, name, args in jobs:
            try:
                if kind == "train":
                    run(args)
                elif kind == "copy":  # a run directory duplicated, to resume it in two ways
                    if rank == 0:
                        shutil.copytree(args[0], args[1])
                    dist.barrier()
                else:
                    JOBS[kind](Path(out), name, rank, world, args)
            except BaseException:
                (Path(out) / f"error-{name}-rank{rank}.txt").write_text(traceback.format_exc())
                raise
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(jobs: list[Job], world: int, out: Path) -> None:
    """Run ``jobs`` in order on ``world`` fresh gloo ranks (one spawn)."""
    torch.multiprocessing.spawn(_worker, args=(world, _free_port(), jobs, str(out)), nprocs=world, join=True)


# ------------------------------------------------------------------------------------------------ comparisons


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from train import checkpoint

    path = checkpoint.list_checkpoints(run_dir)[-1]
    return checkpoint.model_weights(path) if checkpoint.is_sharded_checkpoint(path) else checkpoint.load(path)["model"]


def assert_close_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """|Δw| ≤ W_ATOL + W_RTOL·|w| for every tensor (bounds derived in test_distributed's docstring)."""
    assert a.keys() == b.keys()
    for k in a:
        assert b[k].dtype == a[k].dtype == torch.float64 or not a[k].is_floating_point(), (k, a[k].dtype)
        torch.testing.assert_close(b[k], a[k], rtol=W_RTOL, atol=W_ATOL, msg=lambda m, k=k: f"{k}: {m}")


def assert_same_series(ref: Path, got: Path, keys: tuple[str, ...] = SERIES, steps: int = STEPS,
                       close: Callable[[float, float], bool] | None = None) -> None:
    """Every logged step of every per-step scalar in ``keys`` (those the run logs) within LOSS_RTOL (or ``close``)."""
    close = close or (lambda a, b: abs(a - b) <= LOSS_RTOL * abs(a))
    for key in keys:
        a, b = series(ref, key), series(got, key)
        assert sorted(a) == sorted(b), (key, sorted(a), sorted(b))
        if key == "train/loss":
            assert sorted(a) == list(range(1, steps + 1))
        for step in a:
            assert close(a[step], b[step]), (key, step, a[step], b[step])
