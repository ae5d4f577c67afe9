"""GPU optimizer step: MuonH vs our Muon vs ``torch.optim.Muon`` (experts split to 2-D) vs AdamW, side by side.

``python benchmarks/optim_step_gpu.py [--quick] [--layers N] [--repeats N] [--out FILE] [--json FILE]``

The matrices of ``configs/d12-moe.toml`` (hidden 1536, 63 stacked experts of 512 + a shared one, attention, router)
with ``--layers`` layers (default 4: 0.63B matrix parameters) on one CUDA device, fixed random gradients, one
optimizer per candidate on its own copy, ``step()`` timed interleaved round-robin (``benchmarks/optim_step.py``'s
candidates and method). Every optimizer runs Newton–Schulz in bf16 here (ours by default on CUDA, torch's always),
so the comparison is like for like. Targets: MuonH ≤ 1.15× our Muon, faster than torch's.
Without CUDA it prints why and exits 0 (nothing written).
"""

from __future__ import annotations

import argparse
import sys

import torch

from _common import (RESULTS, ROOT, command, interleaved, loadavg, machine, median, ratio, runnable, table, write,
                     write_json)
from optim_step import QUICK, make_model, matrix_candidates, matrix_params

CONFIG = "configs/d12-moe.toml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 layer, 2 rounds (smoke run)")
    parser.add_argument("--layers", type=int, default=None, help="MoE layers of d12-moe (default 4; quick 1)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 10; quick 2)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cpu: a smoke run of this script on a toy model")
    parser.add_argument("--out", default=None)
    parser.add_argument("--json", default=None, help="also write the results as JSON")
    return parser


def model_spec(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The preset and overrides of the model whose matrices are stepped (on CPU: optim_step.py's toy model)."""
    if args.device == "cpu":
        return "configs/tiny-moe.toml", QUICK
    return CONFIG, [f"model.n_layers={args.layers or (1 if args.quick else 4)}", "model.vocab_size=8192"]


def check(args: argparse.Namespace) -> None:
    """Dry run (no CUDA): the model config with its overrides loads."""
    from train.config import load_config

    config, sets = model_spec(args)
    load_config(ROOT / config, sets)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("optim_step_gpu: no CUDA device; skipped (nothing written)")
        return 0
    config, sets = model_spec(args)
    model = make_model(sets, config, args.device)
    params = matrix_params(model)
    sizes = (sum(p.numel() for p in params), sum(p.numel() for p in params if p.ndim == 3), len(params))
    load_before = loadavg()
    notes: list[str] = []
    fns = runnable(matrix_candidates(model, with_bf16=True, with_fp32_ns=False), notes)
    times = interleaved(fns, args.repeats or (2 if args.quick else 10), warmup=2, device=args.device)
    med = {n: median(t) for n, t in times.items()}
    ref = med.get("Muon (ours, batched)")
    argv_used = list(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Optimizer step on GPU: MuonH vs Muon vs torch.optim.Muon vs AdamW", "",
        f"- command: `{command('optim_step_gpu.py', argv_used)}`",
        f"- machine: {machine(args.device)}",
        f"- load average (1/5/15 min) before: {load_before}, after: {loadavg()}",
        f"- matrices: {config} with {' '.join(sets)} — {sizes[0] / 1e6:.0f}M parameters in {sizes[2]} tensors, "
        f"{sizes[1] / 1e6:.0f}M of them stacked experts (torch's Muon gets each expert as its own 2-D parameter)",
        "- method: fixed random gradients, one optimizer per copy, step() interleaved round-robin; medians.", "",
        *(f"- {note}" for note in notes),
        "", "Targets: MuonH ≤ 1.15× Muon (ours); MuonH faster than torch.optim.Muon.", "",
        *table(["optimizer", "median ms", "vs Muon (ours)"], [[n, f"{med[n] * 1e3:.2f}", ratio(med[n], ref)]
                                                              for n in med]),
    ]
    write(args.out or RESULTS / ("optim_step_gpu_quick.md" if args.quick else "optim_step_gpu.md"), lines)
    write_json(args.json, {"model": [config, *sets], "matrix_params": sizes[0], "median_s": med, "notes": notes})
    return 0


if __name__ == "__main__":
    sys.exit(main())
