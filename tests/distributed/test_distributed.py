"""torch.distributed on CPU (gloo, world size 2, spawned from pytest): DDP and FSDP2 equal one process.

One spawn runs every distributed job (process start-up dominates on a 2-core machine): 5-step trainings for
{ddp, fsdp} × {adamw, muonh, adamh} × {dense, moe}, each with batch 2 per rank × 2 accumulated micro-batches
(gradient sync on the last one only), a run stopped after 3 steps for the resume test, and the global aux loss
check. The single-process references run in the pytest process with the same global batch of 8 windows: dense as
one batch of 8 (so accumulation and sharding are both checked against no accumulation), MoE as 2 micro-batches of
4 (the global aux loss's gradient on an early micro-batch uses the counts seen so far — documented semantics — so
the micro-batch split, not the rank split, must match).

Why float64, and where the tolerances come from
-----------------------------------------------
Data parallelism changes only the *order* of reductions (gradients summed over 2 ranks × micro-batches instead of
one batch; GEMMs of another shape block their sums differently). In fp32 that order is machine dependent (thread
count, AVX2 vs AVX-512 kernels) and Adam turns it into visible weight differences: an element whose gradient is a
near-cancelling sum of per-token terms (rare embedding rows) carries a rounding error that is not small relative
to the gradient itself, and Adam's m/(√v+ε) normalizes that error up to a step of size ~lr. Measured in fp32: up to
8e-6 here, 9.9e-5 (relative 1.3e-2) on an AMD EPYC — no tolerance is a property of the code.

In fp64 (``train.dtype = "float64"``: parameters, activations, router, losses, optimizer states and Newton–Schulz
all fp64) a reduction of n terms in any order differs by at most n·u·Σ|t| with u = 1.1e-16. The largest reductions
here are sums over 256 tokens × 64 features, so a gradient entry differs by ≲ 2e-12·Σ|t|; Adam can amplify that at
most to lr·2·|δg|/ε per step (ε = 1e-8), i.e. ≲ 1e-12 for lr ≤ 0.02 and per-element Σ|t| ≲ 1e-2 — seven orders of
magnitude below fp32's 6e-8 rounding, so cancellation can no longer reach the tolerance on any machine.
Measured over every run here: losses and gradient norms within 7e-15 relative, weights within 1.1e-13 absolute
(7e-11 relative on near-zero entries). Hence ``LOSS_RTOL = 1e-10`` for per-step losses, aux/z values and gradient
norms, and ``|Δw| ≤ 1e-10 + 1e-8·|w|`` for weights: ≥ 1,000× above anything rounding produced, ≥ 1,000× below what
the bugs below produce.

What the comparison catches (each tried once by breaking the code on purpose; each made these tests fail):
- gradients summed instead of averaged across ranks: the gradient norm doubles (relative 1.0 ≫ 1e-10);
- aux counts not all-reduced: the global aux loss and the router gradient differ at 1e-3 … 1e-1;
- a micro-batch dropped or seen twice, or a rank's shard overlapping another's: step-1 losses differ at ~1e-2.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.conftest import tiny_overrides
from tests.runs import argv, assert_one_line_error, series

WORLD = 2
STEPS = 5
PARALLEL = ("ddp", "fsdp")
OPTIMS = ("adamw", "muonh", "adamh")
ARCHS = ("dense", "moe")
LOSS_RTOL = 1e-10  # per-step loss, aux, z, gradient norm (see the module docstring)
W_ATOL, W_RTOL = 1e-10, 1e-8  # final weights
SERIES = ("train/loss", "train/grad_norm", "moe/aux_loss", "moe/z_loss")


def _sets(corpus: Path, cache: Path, arch: str, optim: str, world: int, **extra: object) -> list[str]:
    """A 5-step run of ``world`` ranks whose global batch is 8 windows (see the module docstring)."""
    batch, accum = (2, 2) if world == WORLD else ((8, 1) if arch == "dense" else (4, 2))
    extra = {"train.batch_size": batch, "train.grad_accum": accum, **extra}
    if arch == "moebias":  # aux-loss-free balancing: the bias update reads the all-reduced counts
        extra = {"model.moe.balance": '"bias"', "model.moe.bias_rate": 0.05, **extra}
    return tiny_overrides(corpus, cache, moe=arch.startswith("moe"), **{
        "optim.name": f'"{optim}"', "train.max_steps": STEPS, "train.eval_every": STEPS,
        "train.eval_batches": 1, "train.ckpt_every": 100, "train.dtype": '"float64"', "train.device": '"cpu"',
        "monitor.every": 0, **extra})


# ------------------------------------------------------------------------------------------------ the workers


def _aux_job(out: Path, rank: int) -> None:
    """Each rank routes its half of a fixed batch; the returned aux, value() and DDP-averaged grads are saved."""
    from moe.losses import GlobalBalance

    routers, x = _aux_problem()
    half = x.shape[0] // WORLD
    local_x = x[rank * half:(rank + 1) * half]
    balance = GlobalBalance()
    aux = balance.aux([r(local_x) for r in routers])
    aux.backward()
    grads = [r.weight.grad.clone() for r in routers]
    for g in grads:
        dist.all_reduce(g)
        g /= WORLD  # what DDP / FSDP do with gradients
    torch.save({"aux": aux.detach(), "value": balance.value(), "grads": grads}, out / f"aux_rank{rank}.pt")


def _aux_problem() -> tuple[list[torch.nn.Module], torch.Tensor]:
    from moe.router import Router

    torch.manual_seed(7)
    routers = [Router(16, 8, 2) for _ in range(2)]  # two MoE layers, 8 experts, top-2
    return routers, torch.randn(24, 16)


def _run_counting_reductions(argv: list[str], path: Path) -> None:
    """A training whose DDP gradient all-reduces are counted (a comm hook: one call per bucket and synced backward)."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from train import build
    from train.__main__ import run

    calls: list[int] = []
    original = build.wrap

    def wrap(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        module = original(*args, **kwargs)
        module.register_comm_hook(None, lambda state, bucket: calls.append(1) or allreduce_hook(state, bucket))
        return module

    build.wrap = wrap
    try:
        run(argv)
    finally:
        build.wrap = original
    path.write_text(str(len(calls)))


def _worker(rank: int, port: int, jobs: list[tuple[str, list[str]]], out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # opened here, so train.distributed.init re-uses it across jobs
    from train.__main__ import run

    try:
        for name, argv in jobs:
            try:
                if name == "aux":
                    _aux_job(Path(out), rank)
                elif name.startswith("ddp-muonh-moe"):
                    _run_counting_reductions(argv, Path(out) / f"reductions-{name}-rank{rank}.txt")
                else:
                    run(argv)
            except BaseException:
                (Path(out) / f"error-{name}-rank{rank}.txt").write_text(traceback.format_exc())
                raise
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def runs(text_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every run directory by name: ``ref-<optim>-<arch>`` (one process), ``<parallel>-<optim>-<arch>``."""
    from train.__main__ import main

    root = tmp_path_factory.mktemp("dist")
    cache = root / "cache"
    dirs: dict[str, Path] = {}
    for optim in OPTIMS:
        for arch in ARCHS:
            dirs[f"ref-{optim}-{arch}"] = root / f"ref-{optim}-{arch}"
            assert main(argv(_sets(text_corpus, cache, arch, optim, 1), dirs[f"ref-{optim}-{arch}"])) == 0
    jobs: list[tuple[str, list[str]]] = [("aux", [])]
    for parallel in PARALLEL:
        for optim in OPTIMS:
            for arch in ARCHS:
                name = f"{parallel}-{optim}-{arch}"
                dirs[name] = root / name
                # monitors on under FSDP: they gather DTensor shards, and must not change training
                sets = _sets(text_corpus, cache, arch, optim, WORLD, **{"train.parallel": f'"{parallel}"',
                                                                       "monitor.every": 2 if parallel == "fsdp" else 0})
                jobs.append((name, argv(sets, dirs[name])))
    dirs["ref-muonh-moebias"] = root / "ref-muonh-moebias"
    assert main(argv(_sets(text_corpus, cache, "moebias", "muonh", 1), dirs["ref-muonh-moebias"])) == 0
    dirs["ddp-muonh-moebias"] = root / "ddp-muonh-moebias"
    jobs.append(("ddp-muonh-moebias", argv(_sets(text_corpus, cache, "moebias", "muonh", WORLD), dirs["ddp-muonh-moebias"])))
    # One micro-batch of 4 per rank: its DDP all-reduce count is the reference for "one reduction per step".
    jobs.append(("ddp-muonh-moe-noaccum", argv(_sets(text_corpus, cache, "moe", "muonh", WORLD, **{
        "train.batch_size": 4, "train.grad_accum": 1}), root / "ddp-muonh-moe-noaccum")))
    # Saved at world size 2 after 3 steps; the test resumes it in one process.
    dirs["split"] = root / "split"
    sets = _sets(text_corpus, cache, "moe", "muonh", WORLD, **{"train.parallel": '"fsdp"'})
    jobs.append(("split", argv(sets, dirs["split"], "--stop-after", "3")))
    torch.multiprocessing.spawn(_worker, args=(_free_port(), jobs, str(root)), nprocs=WORLD, join=True)
    dirs["root"], dirs["cache"] = root, cache
    return dirs


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from train import checkpoint

    path = checkpoint.list_checkpoints(run_dir)[-1]
    return checkpoint.model_weights(path) if checkpoint.is_sharded_checkpoint(path) else checkpoint.load(path)["model"]


def _assert_close_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """|Δw| ≤ W_ATOL + W_RTOL·|w| for every tensor (bounds derived in the module docstring)."""
    assert a.keys() == b.keys()
    for k in a:
        assert b[k].dtype == a[k].dtype == torch.float64 or not a[k].is_floating_point(), (k, a[k].dtype)
        torch.testing.assert_close(b[k], a[k], rtol=W_RTOL, atol=W_ATOL, msg=lambda m, k=k: f"{k}: {m}")


def _assert_same_series(ref: Path, got: Path) -> None:
    """Every logged step of every per-step scalar in SERIES (those the run logs) within LOSS_RTOL."""
    for key in SERIES:
        a, b = series(ref, key), series(got, key)
        assert sorted(a) == sorted(b), (key, sorted(a), sorted(b))
        if key == "train/loss":
            assert sorted(a) == list(range(1, STEPS + 1))
        for step in a:
            assert abs(a[step] - b[step]) <= LOSS_RTOL * abs(a[step]), (key, step, a[step], b[step])


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("optim", OPTIMS)
@pytest.mark.parametrize("parallel", PARALLEL)
def test_data_parallel_equals_one_process(runs: dict[str, Path], parallel: str, optim: str, arch: str) -> None:
    ref, got = runs[f"ref-{optim}-{arch}"], runs[f"{parallel}-{optim}-{arch}"]
    _assert_same_series(ref, got)
    _assert_close_weights(_final_weights(ref), _final_weights(got))


def test_ddp_reduces_once_per_step(runs: dict[str, Path]) -> None:
    """Gradients are all-reduced on the last micro-batch only: 2 accumulated micro-batches cost as many DDP
    reductions as 1 (that the accumulated result equals one process is test_data_parallel_equals_one_process)."""
    for rank in range(WORLD):
        once = int((runs["root"] / f"reductions-ddp-muonh-moe-noaccum-rank{rank}.txt").read_text())
        accumulated = int((runs["root"] / f"reductions-ddp-muonh-moe-rank{rank}.txt").read_text())
        assert once > 0 and once % STEPS == 0 and accumulated == once, (once, accumulated)


def test_only_rank0_writes_logs(runs: dict[str, Path]) -> None:
    lines = (runs["fsdp-muonh-moe"] / "metrics.jsonl").read_text().splitlines()
    assert sum('"train/loss"' in line for line in lines) == STEPS  # one record per step, not one per rank
    path = runs["fsdp-muonh-moe"] / "checkpoints" / f"step_{STEPS:06d}"
    manifest = json.loads((path / "manifest.json").read_text())
    files = manifest.pop("files")
    assert manifest == {"format": "dcp", "step": STEPS, "world_size": WORLD}
    assert sorted(files) == sorted(p.name for p in path.iterdir() if p.name != "manifest.json")  # every file hashed
    assert {"trainer.pt", ".metadata", "__0_0.distcp", "__1_0.distcp"} <= set(files)


def test_global_aux_equals_concatenated_batch(runs: dict[str, Path]) -> None:
    from moe.losses import GlobalBalance

    routers, x = _aux_problem()
    balance = GlobalBalance()
    aux = balance.aux([r(x) for r in routers])
    aux.backward()
    for rank in range(WORLD):
        got = torch.load(runs["root"] / f"aux_rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["aux"], aux.detach(), rtol=0, atol=1e-6)  # P all-reduced: global value
        torch.testing.assert_close(got["value"], balance.value(), rtol=0, atol=1e-6)
        for g, r in zip(got["grads"], routers, strict=True):
            torch.testing.assert_close(g, r.weight.grad, rtol=0, atol=1e-6)


def test_save_at_world_2_resume_at_world_1(runs: dict[str, Path], text_corpus: Path) -> None:
    from train.__main__ import main

    split = runs["split"]
    sets = _sets(text_corpus, runs["cache"], "moe", "muonh", 1, **{"train.parallel": '"fsdp"'})
    assert main(argv(sets, split, "--resume")) == 0  # no torchrun: one plain process reads the DCP shards
    _assert_same_series(runs["ref-muonh-moe"], split)
    _assert_close_weights(_final_weights(runs["ref-muonh-moe"]), _final_weights(split))


def test_convert_to_single_file(runs: dict[str, Path], tmp_path: Path) -> None:
    from train import checkpoint
    from train.convert import main

    assert main([str(runs["fsdp-adamh-dense"]), "--out", str(tmp_path / "single")]) == 0
    state = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "single")[-1])
    assert state["trainer"]["step"] == STEPS and (tmp_path / "single" / "tokenizer").is_dir()
    _assert_close_weights(state["model"], _final_weights(runs["ref-adamh-dense"]))
    model, _ = checkpoint.load_model_from_run(tmp_path / "single")
    assert model.config.n_layers == 2


def test_selection_bias_under_ddp_equals_one_process(runs: dict[str, Path]) -> None:
    """The bias is updated from the step's global (all-reduced) counts, so it equals the one-process bias."""
    ref, got = _final_weights(runs["ref-muonh-moebias"]), _final_weights(runs["ddp-muonh-moebias"])
    biases = [k for k in ref if k.endswith("selection_bias")]
    assert biases and all(ref[k].abs().sum() > 0 for k in biases)
    for k in biases:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0)  # ±γ_b sign steps of identical counts: exact
    _assert_close_weights(ref, got)


def test_sharded_checkpoint_is_verified_and_names_the_config_difference(
    runs: dict[str, Path], text_corpus: Path, tmp_path: Path, capsys
) -> None:
    from train import checkpoint
    from train.__main__ import main

    run = tmp_path / "run"
    shutil.copytree(runs["fsdp-adamh-dense"], run)
    sets = _sets(text_corpus, runs["cache"], "dense", "adamh", 1)
    capsys.readouterr()
    rc = main(argv([*sets, "model.hidden=64", "model.mlp_hidden=128"], run, "--resume"))
    assert_one_line_error(rc, capsys.readouterr().err, "different model config", "model.hidden: checkpoint 32, this run 64")
    shard = checkpoint.list_checkpoints(run)[-1] / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    rc = main(argv(sets, run, "--resume"))
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning: ")]
    assert_one_line_error(rc, "\n".join(err), "no valid checkpoint", f"{shard} is corrupt or truncated")
