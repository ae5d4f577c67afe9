"""Training step throughput and model FLOPs utilisation for dense and MoE presets, plus monitoring overhead.

``python benchmarks/train_step.py [--quick] [--steps N] [--presets tiny-dense tiny-moe] [--out FILE]``

Per preset, four trainers are built with ``benchmarks/monitor_overhead.py``'s ``make_trainer`` (identical seeds
and data) at ``monitor.every`` ∈ {0, 1, 10, 100} and their steps are timed with its ``timed_step``, interleaved
round-robin with a fixed fp32 matmul (the machine's *achievable* peak, measured under the same load). The
``every = 0`` trainer gives tokens/s and MFU; the others give the monitoring overhead (measured, and predicted as
cost/N from the cost of one monitor step — less noisy than a difference of two means).

Model FLOPs per token (``train.mfu.flops_per_token``, as the step log's ``train/mfu``) = 6·N +
12·L·n_heads·head_dim·seq_len (PaLM appendix B): N = active parameters per token
excluding the input embedding (a lookup), i.e. attention + top-k experts (+ shared) + router + norms + LM head;
the attention term counts the full (not causal-halved) score and value matmuls, forward + backward.
Writes ``benchmarks/results/train_step.md`` (``train_step_quick.md`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import RESULTS, ROOT, command, loadavg, machine, profile_table, table, write

import monitor_overhead  # the monitors engineer's benchmark: make_trainer / timed_step / EVERY are reused
from models.qwen3 import count_parameters
from train.mfu import flops_per_token
from train.config import dump_toml, load_config

QUICK_SETS = ["model.hidden=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1",
              "model.head_dim=16", "model.mlp_hidden=64", "model.max_seq_len=32", "data.seq_len=32",
              "train.batch_size=2"]


def matmul_peak(n: int, device: torch.device, dtype: torch.dtype) -> tuple[callable, float]:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return (lambda: torch.mm(a, b)), 2 * n**3


def config_file(preset: str, overrides: list[str], tmp: Path) -> str:
    if not overrides:
        return preset
    path = tmp / (Path(preset).stem + "-bench.toml")
    path.write_text(dump_toml(load_config(preset, overrides)))
    return str(path)


def bench_preset(preset: str, overrides: list[str], steps: int, warmup: int, peak_n: int,
                 every: tuple[int, ...] = monitor_overhead.EVERY, profile_steps: bool = False) -> dict:
    """Time the preset's steps at each ``monitor.every`` interleaved with a matmul; on CUDA also the peak memory
    and, with ``profile_steps``, a torch.profiler table of one more step (every=0)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = config_file(preset, overrides, Path(tmp))
        trainers = {e: monitor_overhead.make_trainer(config, e, steps + warmup, Path(tmp) / f"every{e}")
                    for e in every}
        t0 = trainers[0]
        device = t0.device
        mm, mm_flops = matmul_peak(peak_n, device, torch.float32 if device.type == "cpu" else torch.bfloat16)
        times: dict[object, list[float]] = {e: [] for e in every} | {"mm": []}
        names = [*every, "mm"]
        if device.type == "cuda":  # peak over the steps: weights, gradients, optimizer state and activations
            torch.cuda.reset_peak_memory_stats(device)
        for r in range(steps + warmup):
            for name in names[r % len(names):] + names[: r % len(names)]:
                if name == "mm":
                    start = time.perf_counter()
                    mm()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    elapsed = time.perf_counter() - start
                else:
                    elapsed = monitor_overhead.timed_step(trainers[name])
                if r >= warmup:
                    times[name].append(elapsed)
        peak_memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        profile = profile_table(lambda: monitor_overhead.timed_step(t0), device) if profile_steps else None
        cfg = t0.cfg
        flops_token = flops_per_token(t0.model, cfg.data.seq_len)
        counts = count_parameters(t0.model)
        tokens = t0.tokens_per_step
    med = {k: statistics.median(v) for k, v in times.items()}
    mean = {k: statistics.mean(v) for k, v in times.items()}
    return dict(preset=Path(preset).stem, cfg=cfg, med=med, mean=mean, tokens=tokens, flops_token=flops_token,
                counts=counts, peak=mm_flops / med["mm"], peak_n=peak_n, device=device, every=every,
                peak_memory=peak_memory, profile=profile)


def report(results: list[dict], args_line: str, load_before: str, load_after: str, steps: int, warmup: int,
           datasheet_peak: float | None = None) -> list[str]:
    rows, mon_rows, shapes = [], [], []
    for r in results:
        m, cfg = r["med"], r["cfg"]
        step = m[0]
        achieved = r["flops_token"] * r["tokens"] / step
        moe = cfg.model.moe
        shapes.append([r["preset"], cfg.model.n_layers, cfg.model.hidden,
                       f"{moe.num_experts}×{moe.expert_hidden} top-{moe.top_k}" if moe else f"dense {cfg.model.mlp_hidden}",
                       f"{cfg.train.batch_size}×{cfg.data.seq_len}", f"{r['counts']['total'] / 1e6:.2f}M",
                       f"{r['counts']['active'] / 1e6:.2f}M", f"{r['flops_token'] / 1e6:.1f}M"])
        row = [r["preset"], f"{step * 1e3:.1f}", f"{r['tokens'] / step:,.0f}", f"{achieved / 1e9:.2f}",
               f"{r['peak'] / 1e9:.1f}", f"{achieved / r['peak'] * 100:.1f}%"]
        if datasheet_peak:
            row.append(f"{achieved / datasheet_peak * 100:.1f}%")
        rows.append(row)
        base = r["mean"][0]
        cost = r["mean"][1] - base if 1 in r["mean"] else None
        for e in (1, 10, 100):
            measured = f"{(r['mean'][e] / base - 1) * 100:+.1f}%" if e in r["mean"] else "–"
            mean_ms = f"{r['mean'][e] * 1e3:.1f}" if e in r["mean"] else "–"
            predicted = f"{cost / e / base * 100:+.2f}%" if cost is not None else "–"
            mon_rows.append([r["preset"], e, mean_ms, measured, predicted])
    header = ["preset", "median step ms", "tokens/s", "model GFLOP/s", "matmul GFLOP/s", "MFU (vs matmul)"]
    if datasheet_peak:
        header.append(f"MFU (vs {datasheet_peak / 1e12:.0f} TFLOP/s)")
    every = sorted({e for r in results for e in r["every"]})
    return [
        "# Training step: tokens/s, MFU, monitoring overhead", "",
        f"- command: `{args_line}`",
        f"- machine: {machine(results[0]['device'])}",
        f"- load average (1/5/15 min) before: {load_before}, after: {load_after}",
        f"- method: per preset, trainers at monitor.every ∈ {set(every)} (built by "
        f"`benchmarks/monitor_overhead.py:make_trainer`) and a {results[0]['peak_n']}² matmul, timed interleaved "
        f"round-robin, {steps} timed steps each after {warmup} warm-up; medians for throughput, means for "
        "overhead. MFU (vs matmul) = model FLOPs/s ÷ the matmul's FLOP/s measured in the same rounds (the "
        "achievable peak under the same load, not the datasheet).",
        "- model FLOPs/token = 6·N_active(without input embedding) + 12·L·heads·head_dim·seq_len.", "",
        *table(["preset", "layers", "hidden", "MLP", "batch", "total params", "active params", "FLOPs/token"], shapes),
        "", "## Throughput (monitor.every = 0)", "", *table(header, rows),
        "", "## Monitoring overhead (vs monitor.every = 0)", "",
        *table(["preset", "monitor.every", "mean step ms", "overhead (measured)", "overhead (predicted cost/N)"],
               mon_rows),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="toy widths, 3 steps per setting (smoke run)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--presets", nargs="+", default=None, help="default tiny-dense tiny-moe (quick: tiny-moe)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    steps = args.steps or (2 if args.quick else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.presets = args.presets or (["tiny-moe"] if args.quick else ["tiny-dense", "tiny-moe"])
    overrides = QUICK_SETS if args.quick else []
    load_before = loadavg()
    every = (0, 1) if args.quick else monitor_overhead.EVERY  # quick: half the trainers to build
    results = [bench_preset(str(ROOT / "configs" / f"{p}.toml"), overrides, steps, args.warmup,
                            128 if args.quick else 1024, every) for p in args.presets]
    load_after = loadavg()
    argv_used = list(argv if argv is not None else sys.argv[1:])
    lines = report(results, command("train_step.py", argv_used), load_before, load_after, steps, args.warmup)
    out = args.out or RESULTS / ("train_step_quick.md" if args.quick else "train_step.md")
    write(out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
