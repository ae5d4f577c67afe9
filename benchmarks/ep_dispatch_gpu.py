"""Expert-parallel dispatch on GPU: one MoE layer's forward+backward through the EP code path vs no EP (bf16).

``python benchmarks/ep_dispatch_gpu.py [--quick] [--repeats N] [--device cuda|cpu] [--out FILE] [--json FILE]``

One process, world size 1 (an NCCL group of one rank): the EP path runs end to end — count exchange, both
``all_to_all_single`` calls (to itself), the local experts through the ``auto`` backend (megablocks when it imports,
else torch grouped_mm), inverse permutation and gate combine — against the same block without EP, under bf16
autocast with fp32 master weights, candidates and method of ``benchmarks/ep_dispatch.py`` (H=2048, 64 experts of
1,408, top-8, 32,768 tokens: ``moe_layer_gpu.py``'s point). The difference is the EP path's own overhead (permutes,
host sync for the split sizes, NCCL self-exchanges); cross-GPU exchange costs need ≥ 2 GPUs (torchrun with
``train.expert_parallel``). Without CUDA it prints why and exits 0 (nothing written); ``--device cpu`` runs the same
code on CPU with gloo (a smoke run; use with ``--quick``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist

from _common import RESULTS, loadavg, write, write_json
from ep_dispatch import CPU_QUICK, GATE_RTOL, measure, report
from moe_layer_gpu import GPU_POINT, GPU_QUICK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 10; quick 2)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a smoke run of this script")
    parser.add_argument("--out", default=None)
    parser.add_argument("--json", default=None, help="also write the results as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("ep_dispatch_gpu: no CUDA device; skipped (nothing written)")
        return 0
    cuda = args.device == "cuda"
    point = (GPU_QUICK if cuda else CPU_QUICK) if args.quick else GPU_POINT
    load_before = loadavg()
    dist.init_process_group("nccl" if cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        result = measure(point, args.repeats or (2 if args.quick else 10), torch.device(args.device),
                         autocast=torch.bfloat16 if cuda else None, backend="auto")
    finally:
        dist.destroy_process_group()
    if result["error"] > GATE_RTOL:
        raise SystemExit(f"ep_dispatch_gpu: EP output differs from no EP by {result['error']:.2e} > {GATE_RTOL}")
    lines = report("EP dispatch code path on one GPU: MoE layer fwd+bwd, EP 1 vs no EP (bf16 autocast)", argv,
                   "ep_dispatch_gpu.py", args.device, point, 1, result, (load_before, loadavg()),
                   "one process, world size 1 (the all-to-alls exchange with itself); fp32 master weights under "
                   "bf16 autocast (fp32 in a --device cpu smoke run); a device sync and a barrier before and after "
                   "each call")
    write(Path(args.out) if args.out else RESULTS / f"ep_dispatch_gpu{'_quick' if args.quick else ''}.md", lines)
    write_json(args.json, {"point": point.label(), **result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
