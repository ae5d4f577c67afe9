"""GPU training step: tokens/s, MFU (active FLOPs) and peak memory of a dense and an MoE preset (bf16 autocast).

``python benchmarks/train_step_gpu.py [--quick] [--presets d12 d12-moe] [--backends auto] [--batch-sizes 8 4 2]
[--steps N] [--warmup N] [--peak FLOP/s] [--profile] [--out FILE] [--json FILE]``

Per preset, and per ``moe.backend`` of ``--backends`` for MoE presets, the first micro-batch of ``--batch-sizes``
that fits the GPU is used: on ``torch.OutOfMemoryError`` the trainer is freed and the next size tried (every
attempt is recorded). One step = ``train.grad_accum=1`` at that micro-batch, monitors off, timed as in
``benchmarks/train_step.py`` (interleaved with a bf16 8192² matmul, the achievable peak under the same conditions).
Model FLOPs/token = 6·N_active + attention (``train.mfu.flops_per_token``: top-k experts only, no input
embedding). MFU is reported against the device's datasheet dense bf16 peak (``--peak`` overrides) and the matmul.
Peak memory = ``torch.cuda.max_memory_allocated`` over the timed steps (weights, gradients, optimizer state,
activations; +256 MiB for the matmul's operands). ``--profile`` adds a torch.profiler table of one step per row.
Without CUDA it prints why and exits 0 (nothing written).
"""

from __future__ import annotations

import argparse
import gc
import sys

import torch

from _common import RESULTS, ROOT, command, datasheet_bf16_peak, loadavg, machine, table, write, write_json
from train_step import QUICK_SETS as CPU_QUICK_SETS
from train_step import bench_preset

QUICK_SETS = ["model.n_layers=2"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 layers, micro-batch 2, 2 steps (smoke run)")
    parser.add_argument("--presets", nargs="+", default=["d12", "d12-moe"], help="configs/<name>.toml")
    parser.add_argument("--backends", nargs="+", default=["auto"], choices=("auto", "torch", "megablocks", "loop"),
                        help="moe.backend values to run for MoE presets")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                        help="micro-batch sizes to try in order until one fits (default 8 4 2; quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10; quick 2)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak", type=float, default=None, help="datasheet bf16 FLOP/s (default: by device name)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler table of one step per row")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help='config override for every preset, e.g. --set data.cache_dir=".gpu-data"')
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a smoke run of this script")
    parser.add_argument("--out", default=None)
    parser.add_argument("--json", default=None, help="also write the results as JSON")
    return parser


def is_moe(preset: str) -> bool:
    from train.config import load_config

    return load_config(config_path(preset)).model.moe is not None


def defaults(args: argparse.Namespace) -> None:
    args.steps = args.steps or (2 if args.quick else 10)
    args.batch_sizes = args.batch_sizes or ([2] if args.quick else [8, 4, 2])


def config_path(preset: str) -> str:
    return str(ROOT / "configs" / f"{preset}.toml")


def overrides(backend: str | None, batch: int, args: argparse.Namespace) -> list[str]:
    sets = ["train.grad_accum=1", f'train.device="{args.device}"', f"train.batch_size={batch}", *args.overrides]
    if args.quick:  # on CPU: train_step.py's toy widths
        sets += QUICK_SETS if args.device == "cuda" else CPU_QUICK_SETS
    if backend is not None:
        sets.append(f'model.moe.backend="{backend}"')
    return sets


def configurations(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(preset, moe.backend) pairs to run: every backend for MoE presets, None for dense ones."""
    return [(p, b) for p in args.presets for b in (args.backends if is_moe(p) else [None])]


def check(args: argparse.Namespace) -> None:
    """Dry run (no CUDA): every configuration's config loads and its token cache is found (offline when set)."""
    from train.config import load_config
    from train.data import prepare

    defaults(args)
    for preset, backend in configurations(args):
        prepare(load_config(config_path(preset), overrides(backend, args.batch_sizes[0], args)).data)


def run_config(preset: str, backend: str | None, args: argparse.Namespace, steps: int, sizes: list[int]) -> dict:
    """Bench one preset/backend at the first micro-batch of ``sizes`` that fits; the failed attempts are kept."""
    attempts: list[str] = []
    for batch in sizes:
        try:
            r = bench_preset(config_path(preset), overrides(backend, batch, args), steps, args.warmup,
                             8192 if args.device == "cuda" else 256, every=(0,), profile_steps=args.profile)
            return dict(r, backend=backend, batch=batch, attempts=attempts)
        except torch.OutOfMemoryError as err:
            attempts.append(f"batch {batch}: out of memory ({str(err).splitlines()[0][:120]})")
        except Exception as err:  # noqa: BLE001 - e.g. the megablocks backend unavailable: record it, go on
            return dict(preset=preset, backend=backend, error=f"{type(err).__name__}: {str(err).splitlines()[0]}",
                         attempts=attempts)
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return dict(preset=preset, backend=backend, error="no batch size fits", attempts=attempts)


def summarize(r: dict, datasheet: float | None) -> dict:
    """The numbers of one result, JSON-ready."""
    if "error" in r:
        return {k: r[k] for k in ("preset", "backend", "error", "attempts")}
    step, cfg = r["med"][0], r["cfg"]
    achieved = r["flops_token"] * r["tokens"] / step
    return dict(preset=r["preset"], backend=r["backend"], micro_batch=r["batch"], seq_len=cfg.data.seq_len,
                tokens_per_step=r["tokens"], step_ms=step * 1e3, tokens_per_s=r["tokens"] / step,
                model_tflops=achieved / 1e12, matmul_tflops=r["peak"] / 1e12, mfu_vs_matmul=achieved / r["peak"],
                mfu_vs_datasheet=achieved / datasheet if datasheet else None, datasheet_tflops=(datasheet or 0) / 1e12,
                peak_memory_gib=r["peak_memory"] / 2**30 if r["peak_memory"] is not None else None,
                params_total=r["counts"]["total"],
                params_active=r["counts"]["active"], flops_per_token=r["flops_token"], attempts=r["attempts"],
                profile=r["profile"])


def report(rows: list[dict], args_line: str, device: str, load_before: str, steps: int, warmup: int) -> list[str]:
    pct = lambda x: "–" if x is None else f"{x * 100:.1f}%"  # noqa: E731
    gib = lambda x: "–" if x is None else f"{x:.1f}"  # noqa: E731
    ok = [r for r in rows if "error" not in r]
    lines = [
        "# Training step on GPU: tokens/s, MFU, peak memory (bf16 autocast, one GPU)", "",
        f"- command: `{args_line}`", f"- machine: {machine(device)}", f"- load average before: {load_before}",
        f"- method: per preset/backend the first micro-batch of the list that fits; train.grad_accum=1, monitors "
        f"off; {steps} timed steps after {warmup} warm-up, interleaved with a bf16 8192² matmul; medians. "
        "MFU counts active FLOPs only (6·N_active without the input embedding + attention).", "",
        *table(["preset", "backend", "micro-batch", "step ms", "tokens/s", "model TFLOP/s", "MFU (datasheet)",
                "MFU (vs matmul)", "peak GiB", "total / active params"],
               [[r["preset"], r["backend"] or "–", f"{r['micro_batch']}×{r['seq_len']}", f"{r['step_ms']:.1f}",
                 f"{r['tokens_per_s']:,.0f}", f"{r['model_tflops']:.1f}", pct(r["mfu_vs_datasheet"]),
                 pct(r["mfu_vs_matmul"]), gib(r["peak_memory_gib"]),
                 f"{r['params_total'] / 1e6:,.0f}M / {r['params_active'] / 1e6:,.0f}M"] for r in ok]),
    ]
    if ok:
        lines += ["", f"Datasheet peak used: {ok[0]['datasheet_tflops']:.0f} TFLOP/s (0 = unknown device); measured "
                  f"matmul: {ok[0]['matmul_tflops']:.0f} TFLOP/s."]
    for r in rows:
        for note in r["attempts"] + ([f"**failed**: {r['error']}"] if "error" in r else []):
            lines.append(f"- {r['preset']} / {r['backend'] or '–'}: {note}")
    for r in ok:
        if r["profile"]:
            title = f"## Profile: {r['preset']} / {r['backend'] or '–'} (one step)"
            lines += ["", title, "", "```", r["profile"], "```"]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("train_step_gpu: no CUDA device; skipped (nothing written)")
        return 0
    defaults(args)
    steps = args.steps
    datasheet = args.peak or datasheet_bf16_peak(args.device)
    load_before = loadavg()
    rows, fits = [], {}  # a preset's next backend starts at the micro-batch that fitted the previous one
    for preset, backend in configurations(args):
        sizes = args.batch_sizes[args.batch_sizes.index(fits[preset]):] if preset in fits else args.batch_sizes
        result = run_config(preset, backend, args, steps, sizes)
        if "batch" in result:
            fits[preset] = result["batch"]
        rows.append(summarize(result, datasheet))
        print({k: v for k, v in rows[-1].items() if k != "profile"}, flush=True)
    argv_used = list(argv if argv is not None else sys.argv[1:])
    write(args.out or RESULTS / ("train_step_gpu_quick.md" if args.quick else "train_step_gpu.md"),
          report(rows, command("train_step_gpu.py", argv_used), args.device, load_before, steps, args.warmup))
    write_json(args.json, {"device": machine(args.device), "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
