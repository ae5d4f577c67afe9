"""GPU MoE layer forward+backward (bf16): megablocks vs our torch grouped_mm vs transformers vs a dense floor.

``python benchmarks/moe_layer_gpu.py [--quick] [--repeats N] [--profile] [--device cpu] [--out FILE] [--json FILE]``

Hidden 2048, 64 experts of 1408, top-8, 32,768 tokens on one CUDA device; the candidates and side-by-side method
of ``benchmarks/moe_layer.py`` in bf16 weights and activations — ``ours torch`` (our block, torch backend),
``ours megablocks`` (when megablocks imports), ``hf eager`` / ``hf grouped_mm``, ``dense`` — plus ``ours <backend>
amp``: fp32 master weights under bf16 autocast, what training runs (the experts cast their weights every call).
Before timing, a correctness gate on the same routing (transformers 5.17 computes router logits in bf16 and ours in
fp32, so ~2 % of tokens pick other experts and a direct bf16 comparison is no check): each of our candidates vs our
loop backend in fp32 on the same (bf16-rounded) weights, within the bf16 bound of ``moe/dispatch/precision.py``
(a candidate that fails is reported and not timed); and transformers' block in fp32 vs ours in fp32 (max relative
error ≤ 1e-4). ``--profile`` adds torch.profiler tables of our candidates. Without CUDA it prints why and exits 0;
``--device cpu`` runs the same code on CPU (a smoke run; use with ``--quick``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import sys
from collections.abc import Callable

import torch

from _common import (RESULTS, command, first_line, interleaved, loadavg, machine, median, profile_table, ratio,
                     runnable, table, write, write_json)
from moe_layer import QUICK, Point, fwd_bwd, setup

from moe import MoEBlock
from moe.dispatch.precision import BF16_OUT_BOUND, relative_error

GPU_POINT = Point(2048, 64, 8, 32768, 1408)
GPU_QUICK = Point(256, 8, 2, 2048, 128)
HF_FP32_TOL = 1e-4  # fp32 vs fp32 on identical weights and routing: only summation order differs
HF_CHECK = "hf fp32 vs ours fp32"


def megablocks_ok() -> bool:
    from moe.dispatch import megablocks

    return megablocks.available()


@contextlib.contextmanager
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def fp32_copy(block: torch.nn.Module, backend: str | None = None) -> torch.nn.Module:
    """An fp32 copy of ``block`` (optionally an MoEBlock switched to another dispatch backend)."""
    ref = copy.deepcopy(block).float()
    if backend is not None:
        ref.cfg = dataclasses.replace(ref.cfg, backend=backend)
        ref._dispatch.clear()
    return ref


def gate(blocks: dict[str, MoEBlock], hf_eager: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Relative errors of each candidate vs the fp32 loop backend on the same routing, and of HF fp32 (its eager
    experts: grouped_mm may lack fp32 kernels) vs ours fp32."""
    reference = fp32_copy(next(iter(blocks.values())), "loop")
    errors = {}
    with torch.no_grad(), no_tf32():
        ref = reference(x.float())[0]
        for name, block in blocks.items():
            errors[name] = relative_error(block(x)[0], ref)
        hf = fp32_copy(hf_eager)(x.float())
        errors[HF_CHECK] = float(((hf - ref).abs().max() / ref.abs().max()))
    return errors


def failed(errors: dict[str, float]) -> list[str]:
    return [n for n, e in errors.items() if e > (HF_FP32_TOL if n == HF_CHECK else BF16_OUT_BOUND)]


def amp(fn: Callable[[], None], device: str) -> Callable[[], None]:
    def run() -> None:
        with torch.autocast(device, dtype=torch.bfloat16):
            fn()

    return run


def check(args: argparse.Namespace) -> None:
    """Dry run (no CUDA): transformers has the block this compares against."""
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock  # noqa: F401


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 10; quick 3)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler tables of our candidates")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a smoke run of this script")
    parser.add_argument("--out", default=None)
    parser.add_argument("--json", default=None, help="also write the results as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("moe_layer_gpu: no CUDA device; skipped (nothing written)")
        return 0
    p = (GPU_QUICK if args.device == "cuda" else QUICK) if args.quick else GPU_POINT
    backends = ("megablocks",) if args.device == "cuda" and megablocks_ok() else ()
    load_before = loadavg()
    s = setup(p, with_loop=False, device=args.device, dtype=torch.bfloat16, backends=("auto", *backends))
    ours = {"ours torch": s.ours, **s.extra}  # s.ours runs the torch backend (grouped_mm layout on GPU)
    errors = gate(ours, s.hf_eager, s.x)
    notes = [f"**gate FAILED**: {n} {errors[n]:.2e}{'' if n == HF_CHECK else ', not timed'}" for n in failed(errors)]
    try:
        hf_err = f"{s.hf_error():.2e}"
    except Exception as err:  # noqa: BLE001 - information only
        hf_err = first_line(err)
    fns = {n.replace("ours auto", "ours torch"): f for n, f in s.fns(("auto",)).items()}
    for name, block in ours.items():  # training's configuration: fp32 master weights under bf16 autocast
        fns[f"{name} amp"] = amp(fwd_bwd(fp32_copy(block), s.x, s.grad, True), args.device)
    fns = runnable({n: f for n, f in fns.items() if n.removesuffix(" amp") not in failed(errors)}, notes)
    times = interleaved(fns, args.repeats or (3 if args.quick else 10), warmup=2, device=args.device)
    med = {n: median(t) for n, t in times.items()}
    expert_flops = 6 * p.tokens * p.top_k * 3 * p.hidden * p.expert_hidden
    rows = [[n, f"{med[n] * 1e3:.2f}", ratio(med[n], med.get("dense")), ratio(med.get("hf eager"), med[n]),
             ratio(med.get("hf grouped_mm"), med[n]), f"{p.tokens / med[n]:,.0f}",
             f"{expert_flops / med[n] / 1e12:.0f}"]
            for n in med]
    argv_used = list(argv if argv is not None else sys.argv[1:])
    lines = [
        "# MoE layer on GPU: forward+backward (bf16)", "",
        f"- command: `{command('moe_layer_gpu.py', argv_used)}`",
        f"- machine: {machine(args.device)}",
        f"- load average (1/5/15 min) before: {load_before}, after: {loadavg()}",
        f"- point: {p.label()}; megablocks importable: {bool(backends)}",
        "- gate (same routing; normwise relative error vs our fp32 loop backend, bound "
        f"{BF16_OUT_BOUND:.4f}; HF fp32 vs ours fp32 max relative, bound {HF_FP32_TOL}): "
        + ", ".join(f"{n} {e:.2e}" for n, e in errors.items()),
        f"- max |Δ| ours vs HF grouped_mm both in bf16 (routing differs on some tokens; information only): {hf_err}",
        *(f"- {note}" for note in notes),
        "", "Targets: ours ≥ 5× HF eager, ≥ 1.0× HF grouped_mm, ≤ 1.3× dense.", "",
        *table(["candidate", "median ms", "vs dense", "HF eager / this", "HF grouped_mm / this", "tokens/s",
                "expert TFLOP/s (fwd+bwd)"], rows),
    ]
    if args.profile:
        for name in (n for n in fns if n.startswith("ours")):
            lines += ["", f"## Profile: {name}", "", "```", profile_table(fns[name], args.device), "```"]
    write(args.out or RESULTS / ("moe_layer_gpu_quick.md" if args.quick else "moe_layer_gpu.md"), lines)
    write_json(args.json, {"point": p.label(), "median_s": med, "gate": errors, "hf_bf16_max_abs": hf_err,
                           "megablocks": bool(backends), "notes": notes, "pass": not failed(errors)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
