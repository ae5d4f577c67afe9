"""Expert parallelism (gloo, CPU) is invariant: one process = DP = EP = DP × EP for the same global batch.

Runs (``conftest.py``): the world-2 spawn shared with ``test_distributed.py`` (EP 2 under DDP and FSDP, the loop
backend, bias balancing with 4 micro-batches of 1 instead of 2 of 4, a run saved under EP 2 and resumed without
EP and in one process, the FSDP run saved without EP resumed under EP 2, the dispatch, gradient-norm and Newton–Schulz-owner checks) and, marked slow, one world-4 spawn (DP 4,
DP 2 × EP 2 under DDP and FSDP, EP 4, a run saved at EP 2 and resumed at EP 4). Every run is fp64 and compared with
the single-process reference of the same global batch and micro-batch split, with the bounds derived in
``test_distributed.py``'s docstring: EP changes nothing but the order of reductions (the experts' weight gradients
sum the rows received from each rank in another grouping; dense gradients are reduced as under DP). The dispatch
check compares one layer directly: fp64 sums of ≤ 64 terms of magnitude ≤ 10·max|y| in another order differ by
≤ 64·u·10·max|y| ≈ 7e-14·max|y|, so it uses 1e-12·max|reference| (≥ 10× that, ≥ 1e8× below a misrouted row).

Deliberate breaks, each tried once (on the world-2 / world-4 jobs), and what failed:
- a wrong split size, consistent on both sides (rank j sent the rows of experts j, j+n, … while it owns a contiguous
  block): ``test_dispatch_equals_one_process`` "spread rank 0 output: … Mismatched elements: 16 / 80, greatest
  absolute difference 0.069 (up to 4.4e-13 allowed)" and every EP run, ``('train/loss', 1, 6.24617…, 6.24362…)``;
  split sizes that disagree between sender and receiver abort gloo ("Received data size doesn't match expected
  size"), which fails the whole spawn;
- the reverse permutation left out (outputs combined in sorted-slot order): the dispatch test "80 / 80 mismatched,
  greatest absolute difference 0.30" and ``('train/loss', 1, 6.24617…, 6.24985…)``;
- the global aux counts reduced over the data-parallel group (one rank under EP 2) at world 2, or over the EP group
  at world 4 (DP 2 × EP 2): ``('train/loss', 2, 6.232754…, 6.233247…)``, the logged aux at step 1 2.0285 vs 2.0791;
- the expert gradients not divided by the world size (DDP × EP): ``('train/loss', 3, 6.21017649, 6.21017654)`` (MuonH
  normalizes the update, so only clipping and the logged gradient norm see the factor; the norm differs 2×); not
  all-reduced over the data-parallel group at world 4: ``('train/loss', 2, 6.232754…, 6.233404…)``;
- Newton–Schulz on each rank's rows instead of the owner's whole matrix: ``test_newton_schulz_once_per_matrix_on_its
  _owner`` (calls on (0, 7), (1, 7), … shards) and the FSDP MuonH runs, ``('train/loss', 2, 6.24097, 6.24119)``;
- the shared expert's weights taken for expert weights (left out of DDP, reduced over the EP ranks' dp group of one):
  ``('train/loss', 2, 6.2523896…, 6.2523988…)`` (every MoE run has a shared expert and a z-loss, ``harness.run_sets``);
- at world size 1 in process (``test_dispatch_world_of_one_equals_no_ep``), the reverse permutation left out or the
  received rows given to the local experts in reverse order: "output/gradient 0: … Mismatched elements: 80 / 80";
- the gradient norm's DTensor sums of squares not all-reduced over the groups that shard them:
  ``test_grad_norm_and_non_finite_check_are_global_under_ep`` "(0, 34.87…, 44.54…)" (rank 0 saw its shards only);
  a NaN in one rank's experts dropped from the norm: "(0, 44.53…)" finite on rank 0;
- monitor statistics not reduced over ranks (rank 0's view logged): ``test_monitors_reduced_across_ranks``
  ``('monitor/attn_logit_max/layer_00', 2, 3.7903, 3.7886)``; the router entropy (main's router diagnostics) not
  reduced: ``('monitor/router/entropy/layer_00', 2, 0.95784, 0.95737)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from tests.distributed.harness import (MONITOR_EVERY, STEPS, assert_close_weights, assert_same_series, final_weights,
                                       run_sets)
from tests.distributed.jobs import DISPATCH_CASES, dispatch_problem, owner_problem
from tests.runs import argv, series

# (EP run, its one-process reference): optimizers, DDP/FSDP, dispatch backends, balance modes, accumulation splits.
EP_RUNS = [("ep-ddp-muonh-moe", "ref-muonh-moe"), ("ep-fsdp-adamh-moe", "ref-adamh-moe"),
           ("ep-ddp-adamw-moe-loop", "ref-adamw-moe"), ("ep-ddp-muonh-moebias-accum", "ref-muonh-moebias"),
           ("ep-resume-noep", "ref-muonh-moe"), ("ep-resume-from-fsdp", "ref-muonh-moe")]
WORLD4_RUNS = [("w4-ddp-muonh-moe", "ref-muonh-moe"), ("w4-ddp-ep2-muonh-moe", "ref-muonh-moe"),
               ("w4-fsdp-ep2-muonh-moe", "ref-muonh-moe"), ("w4-ddp-ep4-adamh-moe", "ref-adamh-moe"),
               ("w4-split", "ref-adamw-moe")]
# Monitor families that are per-rank statistics combined, not the pooled sample's (train/monitors/stats.py).
# (router/churn: rank 0's probe, not the one-process run's first validation sequences.)
PER_RANK = ("outlier_frac", "max_over_rms", "kurtosis", "router/aux_over_min", "router/churn")
DISPATCH_RTOL = 1e-12  # × max|reference| (module docstring)
GPU = (pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))


def _assert_selection_bias_exact(ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    biases = [k for k in ref if k.endswith("selection_bias")]
    for k in biases:  # ±γ_b sign steps of identical global counts: bit for bit
        assert ref[k].abs().sum() > 0 and torch.equal(got[k], ref[k]), k


@pytest.mark.parametrize(("name", "ref"), EP_RUNS)
def test_expert_parallel_equals_one_process(runs: dict[str, Path], name: str, ref: str) -> None:
    assert_same_series(runs[ref], runs[name])
    ref_w, got_w = final_weights(runs[ref]), final_weights(runs[name])
    assert_close_weights(ref_w, got_w)
    _assert_selection_bias_exact(ref_w, got_w)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "ref"), WORLD4_RUNS)
def test_world4_equals_one_process(runs: dict[str, Path], runs4: dict[str, Path], name: str, ref: str) -> None:
    """DP 4, DP 2 × EP 2 (DDP, FSDP), EP 4, and a run saved at DP 2 × EP 2 (FSDP) and resumed at EP 4 (DDP)."""
    assert_same_series(runs[ref], runs4[name])
    assert_close_weights(final_weights(runs[ref]), final_weights(runs4[name]))


def _monitors(run: Path) -> dict[str, dict[int, float]]:
    names = {k for line in (run / "metrics.jsonl").read_text().splitlines() for k in json.loads(line)
             if k.startswith("monitor/") and not {k.split("/")[1], "/".join(k.split("/")[1:3])} & set(PER_RANK)}
    return {k: series(run, k) for k in sorted(names)}


@pytest.mark.parametrize("name", ["ep-ddp-muonh-moe", "fsdp-muonh-moe"])
def test_monitors_reduced_across_ranks(runs: dict[str, Path], name: str) -> None:
    """Activation statistics, expert loads and optimizer norms logged under EP / DP are those of the global batch:
    the one-process values (fp64 statistics; the sample covers every token of a micro-batch here)."""
    ref, got = _monitors(runs["ref-muonh-moe"]), _monitors(runs[name])
    assert ref.keys() == got.keys() and "monitor/rms/mlp/layer_01" in ref and "monitor/expert_tokens/layer_00/expert_03" in ref
    for key, values in ref.items():
        assert sorted(values) == sorted(got[key]) == list(range(MONITOR_EVERY, STEPS + 1, MONITOR_EVERY)), key
        floor = 1e-12 if key == "monitor/sphere_norm_drift" else 0.0  # ~1e-16: rounding of the retraction itself
        for step, a in values.items():
            assert abs(a - got[key][step]) <= 1e-10 * abs(a) + floor, (key, step, a, got[key][step])


def _load_ranks(root: Path, job: str, world: int) -> list[dict]:
    """What each rank of a check job saved (``tests/distributed/jobs.py``)."""
    return [torch.load(root / f"{job}-rank{r}.pt", weights_only=True) for r in range(world)]


@pytest.mark.parametrize("backend", ["torch", "loop"])
def test_dispatch_equals_one_process(runs: dict[str, Path], backend: str) -> None:
    """One MoE layer, experts over 2 ranks, vs the unsharded layer (loop backend) on the concatenated tokens: outputs
    and every gradient — also when all tokens go to rank 0's experts (rank 1 receives nothing, sends nothing)."""
    for case in DISPATCH_CASES:
        _check_dispatch(_load_ranks(runs["root"], f"dispatch-{backend}-{case}", 2), case)


@pytest.mark.slow
def test_dispatch_equals_one_process_world4(runs4: dict[str, Path]) -> None:
    for case in DISPATCH_CASES:
        _check_dispatch(_load_ranks(runs4["root"], f"dispatch-torch-{case}", 4), case)


def _check_dispatch(got: list[dict], case: str) -> None:
    world = len(got)
    block, x, cotangent = dispatch_problem(world, case, "loop")
    x.requires_grad_()
    y, _ = block(x)
    (y * cotangent).sum().backward()

    def close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
        tol = DISPATCH_RTOL * float(b.abs().max())
        torch.testing.assert_close(a, b, rtol=0, atol=tol, msg=lambda m: f"{case} {what}: {m}")

    per_rank = block.experts.num_experts // world
    for r, g in enumerate(got):
        rows, experts = slice(5 * r, 5 * (r + 1)), slice(per_rank * r, per_rank * (r + 1))
        close(g["y"], y.detach()[rows], f"rank {r} output")
        close(g["x"], x.grad[rows], f"rank {r} input gradient")
        for n, p in block.experts.named_parameters():  # every rank's tokens reach the owner's experts
            close(g["experts"][n], p.grad[experts], f"rank {r} {n} gradient")
    close(sum(g["router"] for g in got), block.router.weight.grad, "router gradient")
    close(sum(g["shared"] for g in got), block.shared_expert.down_proj.weight.grad, "shared expert gradient")
    if case == "one_rank":
        assert all(float(t.abs().max()) == 0 for g in got[1:] for t in g["experts"].values())


@contextmanager
def _world_of_one(device: torch.device) -> Iterator[object]:
    """A one-rank process group in this process (gloo on CPU, NCCL on CUDA) and its 1-D DeviceMesh."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh(device.type, (1,))
    finally:
        dist.destroy_process_group()


def _block_grads(block: torch.nn.Module, x: torch.Tensor, cotangent: torch.Tensor,
                 autocast: torch.dtype | None) -> list[torch.Tensor]:
    """Output, then the gradients of the input, the three expert weights and the router (training's autocast)."""
    from hyperp.optim.sharded import local

    x = x.clone().requires_grad_()
    with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
        y, _ = block(x)
    (y.float() * cotangent).sum().backward()
    experts = [local(p.grad) for p in (block.experts.w_gate, block.experts.w_up, block.experts.w_down)]
    return [y.detach().float(), x.grad, *experts, block.router.weight.grad]


@pytest.mark.parametrize(("device", "backend"), [("cpu", "torch"), ("cpu", "loop"),
                                                 pytest.param("cuda", "torch", marks=GPU),
                                                 pytest.param("cuda", "megablocks", marks=GPU)])
def test_dispatch_world_of_one_equals_no_ep(device: str, backend: str) -> None:
    """The whole EP path in one process (the all-to-alls exchange with the rank itself: gloo here, NCCL on a GPU)
    vs the same block without EP and the same backend: output and every gradient. CPU: fp64, ``DISPATCH_RTOL``.
    CUDA: training's precision (fp32 weights, bf16 autocast); the router is the same computation in both, and each
    side's expert path is within moe.dispatch.precision's bf16 bounds of the exact one, so within twice of each other
    (triangle inequality) — a misrouted row or a missing permutation is O(1)."""
    if backend == "megablocks":
        pytest.importorskip("megablocks")
    dev, cuda = torch.device(device), device == "cuda"
    runs = []
    for ep in (False, True):
        block, x, cotangent = dispatch_problem(1, "spread", backend)
        if cuda:
            block, x, cotangent = block.float().to(dev), x.float().to(dev), cotangent.float().to(dev)
        if not ep:
            runs.append(_block_grads(block, x, cotangent, torch.bfloat16 if cuda else None))
            continue
        with _world_of_one(dev) as mesh:
            block.shard_experts(mesh)
            runs.append(_block_grads(block, x, cotangent, torch.bfloat16 if cuda else None))
    for i, (got, ref) in enumerate(zip(runs[1], runs[0], strict=True)):
        if cuda:
            from moe.dispatch.precision import BF16_GRAD_BOUND, BF16_OUT_BOUND, relative_error

            assert relative_error(got, ref) <= 2 * (BF16_GRAD_BOUND if i else BF16_OUT_BOUND), (i, relative_error(got, ref))
        else:
            torch.testing.assert_close(got, ref, rtol=0, atol=DISPATCH_RTOL * float(ref.abs().max()),
                                       msg=lambda m, i=i: f"output/gradient {i}: {m}")


@pytest.mark.parametrize("world", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_grad_norm_and_non_finite_check_are_global_under_ep(request: pytest.FixtureRequest, world: int) -> None:
    """Every rank gets the whole model's gradient norm (all gradients 1: √(number of elements) of the unsharded
    block; fp64 sums of ≤ 300 ones are exact), and a NaN in one rank's experts makes every rank's norm — hence
    every rank's non-finite check, which skips the step — non-finite."""
    root = request.getfixturevalue("runs" if world == 2 else "runs4")["root"]
    got = _load_ranks(root, "grad-norm", world)
    block, _, _ = dispatch_problem(world, "spread", "loop")
    expected = sum(p.numel() for p in block.parameters()) ** 0.5
    for rank, g in enumerate(got):
        assert abs(float(g["norm"]) - expected) <= 1e-14 * expected, (rank, float(g["norm"]), expected)
        assert not torch.isfinite(g["nan_norm"]), (rank, float(g["nan_norm"]))


def test_newton_schulz_once_per_matrix_on_its_owner(runs: dict[str, Path]) -> None:
    _check_owners(_load_ranks(runs["root"], "owner", 2))


@pytest.mark.slow
def test_newton_schulz_owners_world4(runs4: dict[str, Path]) -> None:
    _check_owners(_load_ranks(runs4["root"], "owner", 4))


def _check_owners(got: list[dict]) -> None:
    """Row-sharded matrices: each orthogonalized once in all (round-robin owners), every rank holding its rows of
    the whole matrix's Newton–Schulz; the expert tensor (sharded on the expert dim) locally on every rank."""
    from hyperp.optim.newton_schulz import newton_schulz

    world = len(got)
    matrices = owner_problem(world)
    *rows_sharded, experts = matrices
    calls = sorted(c for g in got for c in g["calls"] if len(c) == 2)
    assert calls == sorted(tuple(m.shape) for m in rows_sharded)  # once each, on the whole matrix
    assert all(c == (experts.shape[0] // world, *experts.shape[1:]) for g in got for c in g["calls"] if len(c) == 3)
    for i, m in enumerate(matrices):
        parts = [g["results"][i] for g in got]
        # The whole matrix, as every rank would have computed it: the same input, so the same fp64 result.
        torch.testing.assert_close(torch.cat(parts), newton_schulz(m), rtol=0, atol=1e-14, msg=lambda s: f"{i}: {s}")


def test_saved_under_ep_resumes_in_one_process_and_converts(runs: dict[str, Path], text_corpus: Path,
                                                            tmp_path: Path) -> None:
    """EP 2 → one plain process (no torchrun), identical continuation; ``train.convert`` of an EP checkpoint."""
    from train import checkpoint
    from train.__main__ import main
    from train.convert import main as convert

    split = runs["ep-split"]
    manifest = json.loads((checkpoint.list_checkpoints(split)[-1] / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and {"__0_0.distcp", "__1_0.distcp"} <= set(manifest["files"])
    assert main(argv(run_sets(text_corpus, runs["cache"], "moe", "muonh", 1), split, "--resume")) == 0
    assert_same_series(runs["ref-muonh-moe"], split)
    assert_close_weights(final_weights(runs["ref-muonh-moe"]), final_weights(split))
    assert convert(["--run", str(runs["ep-ddp-muonh-moe"]), "--out", str(tmp_path / "single"), "--hf", str(tmp_path / "hf")]) == 0
    state = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "single")[-1])
    assert_close_weights(final_weights(runs["ref-muonh-moe"]), state["model"])
    assert (tmp_path / "hf" / "config.json").is_file()


def test_expert_parallel_config_errors() -> None:
    from hyperp.errors import ConfigError
    from train.config import load_config
    from train.distributed import _expert_mesh

    moe = ["model.moe.num_experts=4", "model.moe.top_k=2", "model.moe.expert_hidden=32"]
    with pytest.raises(ConfigError, match=r"train.expert_parallel=3 must divide model.moe.num_experts=4"):
        load_config("configs/tiny-dense.toml", [*moe, "train.expert_parallel=3"])
    with pytest.raises(ConfigError, match=r"train.expert_parallel=2 needs an MoE model"):
        load_config("configs/tiny-dense.toml", ["train.expert_parallel=2"])
    with pytest.raises(ConfigError, match=r"train.expert_parallel=0 must be >= 1"):
        load_config("configs/tiny-dense.toml", [*moe, "train.expert_parallel=0"])
    with pytest.raises(ConfigError, match=r"train.expert_parallel=4 must divide the number of processes \(6\)"):
        _expert_mesh(4, 6)


def test_expert_parallel_outside_torchrun_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    from train.config import load_config
    from train.distributed import init

    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    cfg = load_config("configs/tiny-dense.toml", ["model.moe.num_experts=4", "model.moe.top_k=2",
                                                  "model.moe.expert_hidden=32", "train.expert_parallel=2"])
    with pytest.warns(UserWarning, match=r"train.expert_parallel=2 ignored: expert parallelism needs torchrun"):
        assert not init(cfg).active
