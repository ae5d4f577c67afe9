"""Collective checks that run inside the spawned workers (:func:`tests.distributed.harness.spawn`), and the problems
they share with their single-process references in the test modules. Each job saves what its rank computed under
``out``; the tests compare it with an independent computation in the pytest process.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

# ------------------------------------------------------------------------------------------------ global aux loss


def aux_problem() -> tuple[list[torch.nn.Module], torch.Tensor]:
    from moe.router import Router

    torch.manual_seed(7)
    routers = [Router(16, 8, 2) for _ in range(2)]  # two MoE layers, 8 experts, top-2
    return routers, torch.randn(24, 16)


def aux_job(out: Path, name: str, rank: int, world: int, args: list[str]) -> None:
    """Each rank routes its share of a fixed batch; the returned aux, value() and DDP-averaged grads are saved."""
    from moe.losses import GlobalBalance

    routers, x = aux_problem()
    part = x.shape[0] // world
    balance = GlobalBalance()
    aux = balance.aux([r(x[rank * part:(rank + 1) * part]) for r in routers])
    aux.backward()
    grads = [r.weight.grad.clone() for r in routers]
    for g in grads:
        dist.all_reduce(g)
        g /= world  # what DDP / FSDP do with gradients
    torch.save({"aux": aux.detach(), "value": balance.value(), "grads": grads}, out / f"{name}_rank{rank}.pt")


# ------------------------------------------------------------------------------------------------ DDP reductions


def counting_job(out: Path, name: str, rank: int, world: int, args: list[str]) -> None:
    """A training whose DDP gradient all-reduces are counted (a comm hook: one call per bucket and synced backward)."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from train import build
    from train.__main__ import run

    calls: list[int] = []
    original = build.wrap

    def wrap(*wrap_args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        module = original(*wrap_args, **kwargs)
        module.register_comm_hook(None, lambda state, bucket: calls.append(1) or allreduce_hook(state, bucket))
        return module

    build.wrap = wrap
    try:
        run(args)
    finally:
        build.wrap = original
    (out / f"reductions-{name}-rank{rank}.txt").write_text(str(len(calls)))


# ------------------------------------------------------------------------------------------------ EP dispatch

DISPATCH_CASES = ("spread", "one_rank")  # routing over every rank's experts / every token to rank 0's experts


def dispatch_problem(world: int, case: str, backend: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """An fp64 SqrtGate MoE block with a shared expert (2 experts per rank, top-2), 5 tokens per rank, a cotangent."""
    from moe import MoEBlock, MoEConfig

    torch.manual_seed(11)
    cfg = MoEConfig(num_experts=2 * world, top_k=2, expert_hidden=8, shared_expert=True, backend=backend,
                    balance="bias")
    block = MoEBlock(16, cfg).double()
    if case == "one_rank":  # a selection bias that sends every token to experts 0 and 1: only rank 0 receives
        block.router.selection_bias[:2] = 100.0
    x = torch.randn(5 * world, 16, dtype=torch.float64)
    return block, x, torch.randn(5 * world, 16, dtype=torch.float64)


def dispatch_job(out: Path, name: str, rank: int, world: int, args: list[str]) -> None:
    """Each rank runs its 5 tokens through the block with the experts spread over all ranks (one EP group);
    saves the output and the gradients of its tokens, its experts, the router and the shared expert."""
    from torch.distributed.device_mesh import init_device_mesh

    (backend,) = args
    mesh = init_device_mesh("cpu", (world,))
    for case in DISPATCH_CASES:
        block, x, cotangent = dispatch_problem(world, case, backend)
        block.shard_experts(mesh)
        rows = slice(5 * rank, 5 * (rank + 1))
        mine = x[rows].clone().requires_grad_()
        y, _ = block(mine)
        (y * cotangent[rows]).sum().backward()
        experts = {n: p.grad.to_local().clone() for n, p in block.experts.named_parameters()}
        torch.save({"y": y.detach(), "x": mine.grad, "experts": experts, "router": block.router.weight.grad,
                    "shared": block.shared_expert.down_proj.weight.grad},
                   out / f"{name}-{case}-rank{rank}.pt")


def grad_norm_job(out: Path, name: str, rank: int, world: int, args: list[str]) -> None:
    """The gradient norm and the non-finite check under EP: the dispatch block with its experts spread over all
    ranks and every gradient 1 (whole norm √(number of elements), a closed form); then a NaN in the last rank's
    experts only. Saves both norms as this rank computed them."""
    from torch.distributed.device_mesh import init_device_mesh

    from hyperp.optim.sharded import local
    from train.distributed import clip_grad_norm_

    block, _, _ = dispatch_problem(world, "spread", "loop")
    block.shard_experts(init_device_mesh("cpu", (world,)))
    params = list(block.parameters())
    for p in params:
        p.grad = torch.ones_like(p)  # a DTensor of ones for a DTensor parameter
    norm = clip_grad_norm_(params, 0.0)
    if rank == world - 1:
        local(block.experts.w_down.grad)[0, 0, 0] = float("nan")
    torch.save({"norm": norm, "nan_norm": clip_grad_norm_(params, 0.0)}, out / f"{name}-rank{rank}.pt")


# ------------------------------------------------------------------------------------------------ Newton–Schulz owners


def owner_problem(world: int) -> list[torch.Tensor]:
    """Matrices with rows that shard evenly, unevenly and not at all over ``world`` ranks, and a stacked expert tensor."""
    g = torch.Generator().manual_seed(5)
    shapes = [(4 * world, 6), (2 * world + 1, 5), (world - 1 or 1, 7), (6, 4 * world), (3 * world, 3 * world),
              (2 * world, 4, 6)]
    return [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]


def owner_job(out: Path, name: str, rank: int, world: int, args: list[str]) -> None:
    """MuonH's orthogonalization of FSDP-style Shard(0) DTensors: which shapes this rank ran Newton–Schulz on, and
    its part of every result."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from hyperp.optim.newton_schulz import newton_schulz
    from hyperp.optim.sharded import orthogonalize, owner_chunks

    mesh = init_device_mesh("cpu", (world,))
    shards = [distribute_tensor(m, mesh, [Shard(0)], src_data_rank=None) for m in owner_problem(world)]
    calls: list[tuple[int, ...]] = []

    def ns(matrix: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(matrix.shape))
        return newton_schulz(matrix)

    results: dict[int, torch.Tensor] = {}
    for chunk in owner_chunks(shards):
        for d, ortho in zip(chunk, orthogonalize(chunk, ns), strict=True):
            results[next(i for i, s in enumerate(shards) if s is d)] = ortho
    torch.save({"calls": calls, "results": [results[i] for i in range(len(shards))]}, out / f"{name}-rank{rank}.pt")


JOBS = {"aux": aux_job, "count": counting_job, "dispatch": dispatch_job, "grad_norm": grad_norm_job,
        "owner": owner_job}
