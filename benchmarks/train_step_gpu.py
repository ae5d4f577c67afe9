"""GPU training step: tokens/s and MFU of the d12 dense and d12-moe presets (bf16 autocast), H100 peak 989 TFLOP/s.

``python benchmarks/train_step_gpu.py [--quick] [--steps N] [--batch-size B] [--peak FLOP/s] [--out FILE]``

Same method as ``benchmarks/train_step.py`` (trainers from ``benchmarks/monitor_overhead.py:make_trainer``, steps
interleaved with a bf16 matmul), with ``train.grad_accum=1`` and a smaller micro-batch so one step takes seconds,
and ``monitor.every`` ∈ {0, 1} (the overhead at 10 and 100 is predicted as cost/N). MFU is reported against the
datasheet dense bf16 peak (``--peak``, default H100 SXM 989e12) and against the measured matmul.
Without CUDA it prints why and exits 0 (nothing written).
"""

from __future__ import annotations

import argparse
import sys

import torch

from _common import RESULTS, ROOT, command, loadavg, write
from train_step import bench_preset, report

H100_BF16_PEAK = 989e12


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 layers, 2 steps (smoke run)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--presets", nargs="+", default=["d12", "d12-moe"])
    parser.add_argument("--peak", type=float, default=H100_BF16_PEAK)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("train_step_gpu: no CUDA device; skipped (nothing written)")
        return 0
    steps = args.steps or (2 if args.quick else 20)
    overrides = ["train.grad_accum=1", f"train.batch_size={args.batch_size}", "train.device=\"cuda\""]
    if args.quick:
        overrides += ["model.n_layers=2", "train.batch_size=2"]
    load_before = loadavg()
    results = [bench_preset(str(ROOT / "configs" / f"{p}.toml"), overrides, steps, args.warmup, 8192, every=(0, 1))
               for p in args.presets]
    argv_used = list(argv if argv is not None else sys.argv[1:])
    lines = report(results, command("train_step_gpu.py", argv_used), load_before, loadavg(), steps, args.warmup,
                   datasheet_peak=args.peak)
    write(args.out or RESULTS / ("train_step_gpu_quick.md" if args.quick else "train_step_gpu.md"), lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
