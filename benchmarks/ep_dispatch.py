"""Expert-parallel dispatch overhead: one MoE layer's forward+backward with its experts sharded over 2 processes
(all-to-all) vs every process holding all experts (no EP), on CPU with gloo.

``python benchmarks/ep_dispatch.py [--quick] [--repeats N] [--out FILE] [--json FILE]``

Two processes (``torch.multiprocessing``, gloo on localhost, one intra-op thread each: the machine's 2 cores), the
same layer weights on both (same seed), each with its own tokens; candidates timed interleaved round-robin (order
rotated each round), a barrier before and after every call, so a time is the slower rank's:

- ``no EP``: :class:`moe.MoEBlock` (torch backend) with all E experts on every rank — what DDP / FSDP training computes;
- ``EP 2``: the same block after ``shard_experts``: E/2 experts per rank, tokens exchanged with ``all_to_all_single``
  (:mod:`moe.expert_parallel`);
- ``EP exchanges only``: the EP path's communication alone on the same routing — the count exchange and the token
  all-to-all and its reverse, forward and backward (the 4 data exchanges of a layer's fwd+bwd), no expert compute;
- ``expert-grad all-reduce``: the all-reduce of this layer's expert gradients that DDP without EP pays once per
  optimizer step (EP over all ranks needs none: each expert lives on one rank).

Before timing, the EP output is checked against the no-EP output on the same tokens (fp32: max relative error).
Writes ``benchmarks/results/ep_dispatch.md`` (``ep_dispatch_quick.md`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from _common import RESULTS, command, loadavg, machine, table, write, write_json
from moe_layer import Point

from moe import MoEBlock
from moe.config import MoEConfig
from moe.dispatch import get_dispatch
from moe.expert_parallel import EXPERT_PARAMS

CPU_POINT = Point(256, 16, 4, 2048, 128)  # per rank: 2,048 tokens; fine-grained experts (I = H/2)
CPU_QUICK = Point(32, 4, 2, 64, 16)
GATE_RTOL = 1e-4  # fp32, same routing: only the grouping of each expert's rows (and so GEMM blocking) differs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _fwd_bwd(block: MoEBlock, x: torch.Tensor, cotangent: torch.Tensor, autocast: torch.dtype | None) -> None:
    with torch.autocast(x.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        y, _ = block(x)
    y.backward(cotangent.to(y.dtype))
    block.zero_grad(set_to_none=True)


def _exchanges(block: MoEBlock, x: torch.Tensor, group: dist.ProcessGroup) -> Callable[[], None]:
    """The EP layer's communication on ``x``'s routing (counts, tokens out and back, both again in backward)."""
    from torch.distributed._functional_collectives import all_to_all_single

    with torch.no_grad():
        indices = block.router(x).indices.reshape(-1)
    n = dist.get_world_size(group)
    counts = torch.bincount(indices, minlength=block.cfg.num_experts)
    rows = x[torch.argsort(indices, stable=True) // block.cfg.top_k].detach().requires_grad_()

    def run() -> None:
        received = all_to_all_single(counts, None, None, group)
        send, receive = torch.stack([counts.view(n, -1).sum(1), received.view(n, -1).sum(1)]).tolist()
        out = all_to_all_single(rows, receive, send, group)
        all_to_all_single(out, send, receive, group).sum().backward()

    return run


def measure(p: Point, repeats: int, device: torch.device, autocast: torch.dtype | None = None,
            backend: str = "torch") -> dict:
    """Run inside an open process group: every rank times the candidates; returns rank-local medians (seconds)."""
    from torch.distributed.device_mesh import init_device_mesh

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    cfg = MoEConfig(num_experts=p.experts, top_k=p.top_k, expert_hidden=p.expert_hidden, backend=backend)
    local = MoEBlock(p.hidden, cfg).to(device)
    ep = copy.deepcopy(local)
    ep.shard_experts(init_device_mesh(device.type, (world,)))
    g = torch.Generator(device=device).manual_seed(100 + rank)
    x = torch.randn(p.tokens, p.hidden, generator=g, device=device)
    cotangent = torch.randn(p.tokens, p.hidden, generator=g, device=device)
    with torch.no_grad():
        error = float((ep(x)[0] - local(x)[0]).abs().max() / local(x)[0].abs().max())
    grads = torch.zeros(sum(getattr(local.experts, n).numel() for n in EXPERT_PARAMS), device=device)
    fns = {"no EP": lambda: _fwd_bwd(local, x, cotangent, autocast),
           f"EP {world}": lambda: _fwd_bwd(ep, x, cotangent, autocast),
           "EP exchanges only": _exchanges(ep, x, ep.ep_mesh.get_group()),
           "expert-grad all-reduce": lambda: dist.all_reduce(grads)}
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats + 1):  # round 0 warms up
        for name in names[r % len(names):] + names[: r % len(names)]:
            _sync(device)
            dist.barrier()
            start = time.perf_counter()
            fns[name]()
            _sync(device)
            dist.barrier()
            if r:
                times[name].append(time.perf_counter() - start)
    rows_away = 1.0 - float(torch.bincount(local.router(x).indices.reshape(-1) // (p.experts // world),
                                           minlength=world)[rank]) / (p.tokens * p.top_k)
    return {"median_s": {n: statistics.median(t) for n, t in times.items()}, "rounds": repeats,
            "error": error, "rows_sent_away": rows_away,
            "backend": get_dispatch(backend, device).__module__.rsplit(".", 1)[-1]}


def _worker(rank: int, world: int, port: int, point: Point, repeats: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = measure(point, repeats, torch.device("cpu"))
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def report(title: str, argv: list[str] | None, script: str, device: str, point: Point, world: int, result: dict,
           load: tuple[str, str], method: str) -> list[str]:
    argv = list(argv if argv is not None else sys.argv[1:])
    medians = result["median_s"]
    base = medians["no EP"]
    rows = [[name, f"{1e3 * t:.2f}", f"{t / base:.2f}×"] for name, t in medians.items()]
    return [
        f"# {title}",
        "",
        f"- command: `{command(script, argv)}`",
        f"- machine: {machine(device)}; {world} process(es)",
        f"- load average (1/5/15 min) before: {load[0]}, after: {load[1]}",
        f"- point: {point.label()} (tokens per rank), local experts through the `{result['backend']}` backend, "
        f"{result['rounds']} interleaved rounds; medians",
        f"- method: {method}",
        f"- EP output vs no EP on the same tokens: max relative error {result['error']:.1e} (bound {GATE_RTOL:g}); "
        f"share of rank 0's token-slots whose expert lives on another rank: {result['rows_sent_away']:.0%}",
        "",
        *table(["candidate", "median ms", "vs no EP"], rows),
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 15; quick 2)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--json", default=None, help="also write the results as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    point = CPU_QUICK if args.quick else CPU_POINT
    repeats = args.repeats or (2 if args.quick else 15)
    load_before = loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.json"
        torch.multiprocessing.spawn(_worker, args=(2, _free_port(), point, repeats, str(out)), nprocs=2, join=True)
        result = json.loads(out.read_text())
    if result["error"] > GATE_RTOL:
        raise SystemExit(f"ep_dispatch: EP output differs from no EP by {result['error']:.2e} > {GATE_RTOL}")
    lines = report("EP dispatch overhead: MoE layer fwd+bwd, EP 2 vs no EP (fp32, CPU, gloo)", argv,
                   "ep_dispatch.py", "cpu", point, 2, result, (load_before, loadavg()),
                   "2 processes × 1 intra-op thread on localhost gloo; a barrier before and after each call (times "
                   "are the slower rank's); same weights on both ranks, different tokens")
    write(Path(args.out) if args.out else RESULTS / f"ep_dispatch{'_quick' if args.quick else ''}.md", lines)
    write_json(args.json, {"point": point.label(), **result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
