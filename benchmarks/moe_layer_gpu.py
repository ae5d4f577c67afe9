"""GPU MoE layer forward+backward (bf16): megablocks vs our torch grouped_mm vs transformers vs a dense floor.

``python benchmarks/moe_layer_gpu.py [--quick] [--repeats N] [--out FILE]``

Hidden 2048, 64 experts of 768 (Qwen3-30B-A3B's expert width), top-8, 32,768 tokens, bf16 weights and
activations on one CUDA device; the same candidates and side-by-side method as ``benchmarks/moe_layer.py``
(``ours megablocks`` when megablocks is importable). Without CUDA it prints why and exits 0 (nothing written).
Writes ``benchmarks/results/moe_layer_gpu.md`` (``moe_layer_gpu_quick.md`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import sys

import torch

from _common import RESULTS, command, interleaved, loadavg, machine, median, table, write
from moe_layer import Point, candidates

GPU_POINT = Point(2048, 64, 8, 32768, 768)
GPU_QUICK = Point(256, 8, 2, 2048, 128)


def megablocks_ok() -> bool:
    try:
        from moe.dispatch import megablocks

        return bool(megablocks.available())
    except ImportError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("moe_layer_gpu: no CUDA device; skipped (nothing written)")
        return 0
    p = GPU_QUICK if args.quick else GPU_POINT
    backends = ("auto",) + (("megablocks",) if megablocks_ok() else ())
    load_before = loadavg()
    fns, err = candidates(p, with_loop=False, device="cuda", dtype=torch.bfloat16, backends=backends, tol=5e-2)
    times = interleaved(fns, args.repeats or (3 if args.quick else 20), warmup=2, device="cuda")
    med = {n: median(t) for n, t in times.items()}
    best = min(v for n, v in med.items() if n.startswith("ours"))
    rows = [[n, f"{med[n] * 1e3:.2f}", f"{med[n] / med['dense']:.2f}×", f"{med[n] / best:.2f}×",
             f"{p.tokens / med[n]:,.0f}",
             f"{6 * p.tokens * p.top_k * 3 * p.hidden * p.expert_hidden / med[n] / 1e12:.0f}"] for n in med]
    argv_used = list(argv if argv is not None else sys.argv[1:])
    lines = [
        "# MoE layer on GPU: forward+backward (bf16)", "",
        f"- command: `{command('moe_layer_gpu.py', argv_used)}`",
        f"- machine: {machine('cuda')}",
        f"- load average (1/5/15 min) before: {load_before}, after: {loadavg()}",
        f"- point: {p.label()}; max |Δ| of our block vs transformers' (bf16): {err:.1e}",
        f"- megablocks importable: {megablocks_ok()}", "",
        *table(["candidate", "median ms", "vs dense", "vs our best", "tokens/s", "expert TFLOP/s (fwd+bwd)"], rows),
    ]
    write(args.out or RESULTS / ("moe_layer_gpu_quick.md" if args.quick else "moe_layer_gpu.md"), lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
