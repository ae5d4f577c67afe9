"""The runs every distributed test reads: single-process references (in the pytest process) and one spawn of gloo
workers per world size running all distributed jobs (``tests/distributed/harness.py``).

World 2 (default suite): data parallelism (DDP, FSDP2) and expert parallelism (EP 2: DDP and FSDP, the loop backend,
bias balancing with another accumulation split, a run saved under EP and resumed without it, one saved without EP
and resumed under it). World 4 (``slow``):
DP 4, DP 2 × EP 2 (DDP and FSDP), EP 4, saved at EP 2 and resumed at EP 4.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed.harness import ARCHS, MONITOR_EVERY, OPTIMS, PARALLEL, Job, run_sets, spawn
from tests.runs import argv



def _ref_runs(corpus: Path, cache: Path, root: Path) -> dict[str, Path]:
    """``ref-<optim>-<arch>`` in this process; ref-muonh-moe also collects monitors (they never change training)."""
    from train.__main__ import main

    dirs: dict[str, Path] = {}
    for optim in OPTIMS:
        for arch in (*ARCHS, *(("moebias",) if optim == "muonh" else ())):
            name = f"ref-{optim}-{arch}"
            monitors = {"monitor.every": MONITOR_EVERY} if name == "ref-muonh-moe" else {}
            dirs[name] = root / name
            assert main(argv(run_sets(corpus, cache, arch, optim, 1, **monitors), dirs[name])) == 0
    return dirs


def _train(jobs: list[Job], dirs: dict[str, Path], root: Path, name: str, sets: list[str], *extra: str,
           kind: str = "train") -> None:
    dirs[name] = root / name
    jobs.append((kind, name, argv(sets, dirs[name], *extra)))


def _data_parallel_jobs(corpus: Path, cache: Path, root: Path, dirs: dict[str, Path]) -> list[Job]:
    jobs: list[Job] = [("aux", "aux", [])]
    for parallel in PARALLEL:
        for optim in OPTIMS:
            for arch in ARCHS:
                # monitors on under FSDP: they reduce DTensor shards, and must not change training
                sets = run_sets(corpus, cache, arch, optim, 2, **{"train.parallel": f'"{parallel}"',
                                                                   "monitor.every": 2 if parallel == "fsdp" else 0})
                name = f"{parallel}-{optim}-{arch}"
                _train(jobs, dirs, root, name, sets, kind="count" if name == "ddp-muonh-moe" else "train")
    _train(jobs, dirs, root, "ddp-muonh-moebias", run_sets(corpus, cache, "moebias", "muonh", 2))
    # One micro-batch of 4 per rank: its DDP all-reduce count is the reference for "one reduction per step".
    _train(jobs, dirs, root, "ddp-muonh-moe-noaccum", run_sets(corpus, cache, "moe", "muonh", 2, **{
        "train.batch_size": 4, "train.grad_accum": 1}), kind="count")
    # Saved at world size 2 after 3 steps; the test resumes it in one process.
    _train(jobs, dirs, root, "split", run_sets(corpus, cache, "moe", "muonh", 2, **{"train.parallel": '"fsdp"'}),
           "--stop-after", "3")
    return jobs


def _expert_parallel_jobs(corpus: Path, cache: Path, root: Path, dirs: dict[str, Path]) -> list[Job]:
    def ep(arch: str, optim: str, **extra: object) -> list[str]:
        return run_sets(corpus, cache, arch, optim, 2, **{"train.expert_parallel": 2, **extra})

    jobs: list[Job] = [("dispatch", "dispatch-torch", ["torch"]), ("dispatch", "dispatch-loop", ["loop"]),
                       ("owner", "owner", []), ("grad_norm", "grad-norm", [])]
    _train(jobs, dirs, root, "ep-ddp-muonh-moe", ep("moe", "muonh", **{"monitor.every": MONITOR_EVERY}))
    # Activation checkpointing recomputes each block's forward, all-to-alls included, in backward: same numbers.
    _train(jobs, dirs, root, "ep-fsdp-adamh-moe", ep("moe", "adamh", **{"train.parallel": '"fsdp"',
                                                                       "train.activation_checkpointing": "true"}))
    _train(jobs, dirs, root, "ep-ddp-adamw-moe-loop", ep("moe", "adamw", **{"model.moe.backend": '"loop"'}))
    # Bias balancing trains no aux loss, so the gradient does not depend on the micro-batch split: 4 micro-batches
    # of 1 per rank against the reference's 2 of 4.
    _train(jobs, dirs, root, "ep-ddp-muonh-moebias-accum", ep("moebias", "muonh", **{
        "train.batch_size": 1, "train.grad_accum": 4}))
    _train(jobs, dirs, root, "ep-split", ep("moe", "muonh"), "--stop-after", "3")
    dirs["ep-resume-noep"] = root / "ep-resume-noep"
    jobs.append(("copy", "copy-ep-split", [str(dirs["ep-split"]), str(dirs["ep-resume-noep"])]))
    jobs.append(("train", "ep-resume-noep", argv(run_sets(corpus, cache, "moe", "muonh", 2), dirs["ep-resume-noep"],
                                                 "--resume")))
    # The other way: the FSDP run saved without EP (``split``, data-parallel jobs) resumed under EP 2.
    dirs["ep-resume-from-fsdp"] = root / "ep-resume-from-fsdp"
    jobs.append(("copy", "copy-split", [str(dirs["split"]), str(dirs["ep-resume-from-fsdp"])]))
    jobs.append(("train", "ep-resume-from-fsdp", argv(ep("moe", "muonh"), dirs["ep-resume-from-fsdp"], "--resume")))
    return jobs


@pytest.fixture(scope="session")
def runs(text_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every run directory by name: ``ref-<optim>-<arch>`` (one process), the world-2 runs, ``root`` and ``cache``."""
    root = tmp_path_factory.mktemp("dist")
    cache = root / "cache"
    dirs = _ref_runs(text_corpus, cache, root)
    jobs = _data_parallel_jobs(text_corpus, cache, root, dirs) + _expert_parallel_jobs(text_corpus, cache, root, dirs)
    spawn(jobs, 2, root)
    dirs["root"], dirs["cache"] = root, cache
    return dirs


@pytest.fixture(scope="session")
def runs4(runs: dict[str, Path], text_corpus: Path) -> dict[str, Path]:
    """The world-4 runs (their references are the world-2 fixture's one-process runs)."""
    root, cache = runs["root"] / "world4", runs["cache"]
    root.mkdir()

    def sets(optim: str, parallel: str, ep: int, **extra: object) -> list[str]:
        return run_sets(text_corpus, cache, "moe", optim, 4, **{"train.parallel": f'"{parallel}"',
                                                                  "train.expert_parallel": ep, **extra})

    dirs: dict[str, Path] = {"root": root}
    jobs: list[Job] = [("aux", "aux", []), ("dispatch", "dispatch-torch", ["torch"]), ("owner", "owner", []),
                       ("grad_norm", "grad-norm", [])]
    _train(jobs, dirs, root, "w4-ddp-muonh-moe", sets("muonh", "ddp", 1))
    _train(jobs, dirs, root, "w4-ddp-ep2-muonh-moe", sets("muonh", "ddp", 2))
    _train(jobs, dirs, root, "w4-fsdp-ep2-muonh-moe", sets("muonh", "fsdp", 2, **{"monitor.every": MONITOR_EVERY}))
    _train(jobs, dirs, root, "w4-ddp-ep4-adamh-moe", sets("adamh", "ddp", 4))
    _train(jobs, dirs, root, "w4-split", sets("adamw", "fsdp", 2), "--stop-after", "3")
    jobs.append(("train", "w4-resume-ep4", argv(sets("adamw", "ddp", 4), dirs["w4-split"], "--resume")))
    spawn(jobs, 4, root)
    return dirs
