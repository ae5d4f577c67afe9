"""Optimizer step time: MuonH vs Muon (ours and ``torch.optim.Muon``) vs AdamW, side by side.

``python benchmarks/optim_step.py [--quick] [--repeats N] [--out FILE]``

Two models: the ``tiny-moe`` preset and a larger MoE (``tiny-moe`` widened to hidden 512, 32 stacked experts of
256, top-4, 2 layers: 3-D expert tensors dominate). Fixed random gradients; one optimizer per candidate on its own
copy of the model; steps timed interleaved round-robin in one process; medians.

*Matrix parameters* (every 2-D hidden matrix, the router and the stacked (E, out, in) experts — what Muon
optimizes) with:

- ``MuonH``: ``MuonH(sphere=True)`` (Newton–Schulz batched over experts + the fixed-norm retraction);
- ``Muon (ours)``: ``MuonH(sphere=False)``, torch.optim.Muon's semantics, also batched over experts;
- ``torch Muon fp32-NS``: ``torch.optim.Muon`` over the same matrices with every expert a separate 2-D parameter
  (what a plain-torch user does: torch's Muon rejects 3-D) — torch runs Newton–Schulz in bf16, which CPUs without
  bf16 matmul units execute slowly, so this row swaps in an fp32 Newton–Schulz (same maths as our default on CPU),
  and ``torch Muon (bf16 NS, as shipped)`` is the unmodified optimizer;
- ``AdamW``: ``torch.optim.AdamW`` (foreach) over the same matrices.

*Whole model* (``hyperp.build_optimizer``): ``muonh`` vs ``muon`` vs ``adamw`` presets, embeddings and norms in
their Adam groups. Writes ``benchmarks/results/optim_step.md`` (``optim_step_quick.md`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
from collections.abc import Callable, Iterator

import torch
from torch import nn

from _common import RESULTS, ROOT, command, interleaved, loadavg, machine, median, table, write

from hyperp import MuonH, OptimConfig, build_optimizer
from hyperp.roles import Role, collect
from models.qwen3 import build_model, count_parameters
from train.config import load_config

LARGER = ["model.hidden=512", "model.n_layers=2", "model.n_heads=8", "model.n_kv_heads=4", "model.head_dim=64",
          "model.moe.num_experts=32", "model.moe.top_k=4", "model.moe.expert_hidden=256"]
QUICK = ["model.hidden=64", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1", "model.head_dim=32",
         "model.moe.num_experts=4", "model.moe.top_k=2", "model.moe.expert_hidden=32", "model.vocab_size=512"]


def make_model(overrides: list[str], config: str = "configs/tiny-moe.toml", device: str = "cpu") -> nn.Module:
    cfg = load_config(ROOT / config, overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-2
    return model


def matrix_params(model: nn.Module) -> list[nn.Parameter]:
    params = dict(model.named_parameters())
    roles = (Role.MATRIX, Role.EXPERT, Role.ROUTER)
    return [params[name] for name, role in collect(model).items() if role in roles and name in params]


def split_experts(params: list[nn.Parameter]) -> list[nn.Parameter]:
    """2-D parameters only: each (E, out, in) tensor becomes E separate (out, in) parameters (with their grads)."""
    out = []
    for p in params:
        if p.ndim == 2:
            out.append(p)
            continue
        for e in range(p.shape[0]):
            q = nn.Parameter(p.detach()[e].clone())
            q.grad = p.grad[e].clone()
            out.append(q)
    return out


@contextlib.contextmanager
def torch_muon_ns(dtype: torch.dtype | None) -> Iterator[None]:
    """Run torch.optim.Muon's Newton–Schulz in ``dtype`` (None: unchanged, bf16 as shipped)."""
    import torch.optim._muon as tm

    original = tm._zeropower_via_newtonschulz
    if dtype is None:
        yield
        return

    def ns(grad, ns_coefficients, ns_steps, eps):  # torch's own routine, without the .bfloat16() cast
        a, b, c = ns_coefficients
        x = grad.to(dtype)
        if grad.size(0) > grad.size(1):
            x = x.T
        x = x / x.norm().clamp(min=eps)
        for _ in range(ns_steps):
            gram = x @ x.T
            update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
            x = torch.addmm(x, update, x, beta=a)
        if grad.size(0) > grad.size(1):
            x = x.T
        return x

    tm._zeropower_via_newtonschulz = ns
    try:
        yield
    finally:
        tm._zeropower_via_newtonschulz = original


def stepper(opt: torch.optim.Optimizer, ns_dtype: torch.dtype | None = None, patch: bool = False
            ) -> Callable[[], None]:
    def run() -> None:
        if patch:
            with torch_muon_ns(ns_dtype):
                opt.step()
        else:
            opt.step()

    return run


def matrix_candidates(model: nn.Module, with_bf16: bool, with_fp32_ns: bool = True) -> dict[str, Callable[[], None]]:
    copies = {}

    def params_of(name: str) -> list[nn.Parameter]:
        copies[name] = copy.deepcopy(model)
        for p, q in zip(model.parameters(), copies[name].parameters()):
            q.grad = p.grad.clone()
        return matrix_params(copies[name])

    fns = {
        "MuonH": stepper(MuonH(params_of("muonh"), lr=0.02, sphere=True)),
        "Muon (ours, batched)": stepper(MuonH(params_of("muon"), lr=0.02, sphere=False)),
    }
    if with_fp32_ns:
        fns["torch Muon fp32-NS (experts split)"] = stepper(
            torch.optim.Muon(split_experts(params_of("tmuon")), lr=0.02), torch.float32, patch=True)
    if with_bf16:
        fns["torch Muon bf16-NS as shipped (experts split)"] = stepper(
            torch.optim.Muon(split_experts(params_of("tmuon16")), lr=0.02))
    fns["AdamW"] = stepper(torch.optim.AdamW(params_of("adamw"), lr=1e-3))
    return fns


def model_candidates(model: nn.Module) -> dict[str, Callable[[], None]]:
    fns = {}
    for name in ("muonh", "muon", "adamw"):
        m = copy.deepcopy(model)
        for p, q in zip(model.parameters(), m.parameters()):
            q.grad = p.grad.clone()
        fns[f"build_optimizer({name})"] = stepper(build_optimizer(m, OptimConfig(name=name)))
    return fns


def summarize(label: str, times: dict[str, list[float]], ref: str) -> list[list[str]]:
    med = {n: median(t) for n, t in times.items()}
    return [[label, n, len(times[n]), f"{med[n] * 1e3:.1f}", f"{med[n] / med[ref]:.2f}×"] for n in times]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a one-layer toy model, 2 repeats (smoke run)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="also time torch.optim.Muon as shipped (bf16 Newton–Schulz; slow on CPUs without bf16)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 7)
    with_bf16 = args.bf16 if args.bf16 is not None else not args.quick
    models = [("toy (quick)", QUICK)] if args.quick else [("tiny-moe", []), ("larger MoE", LARGER)]
    load_before = loadavg()
    matrix_rows, model_rows, sizes = [], [], []
    for label, overrides in models:
        model = make_model(overrides)
        counts = count_parameters(model)
        experts = sum(p.numel() for p in matrix_params(model) if p.ndim == 3)
        sizes.append([label, " ".join(overrides) or "preset", f"{counts['total'] / 1e6:.1f}M",
                      f"{sum(p.numel() for p in matrix_params(model)) / 1e6:.1f}M", f"{experts / 1e6:.1f}M"])
        times = interleaved(matrix_candidates(model, with_bf16), repeats, warmup=1)
        matrix_rows += summarize(label, times, "Muon (ours, batched)")
        times = interleaved(model_candidates(model), repeats, warmup=1)
        model_rows += summarize(label, times, "build_optimizer(muon)")
        print(matrix_rows, model_rows, flush=True)
    load_after = loadavg()
    argv_used = list(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Optimizer step: MuonH vs Muon vs AdamW (fp32, CPU)", "",
        f"- command: `{command('optim_step.py', argv_used)}`",
        f"- machine: {machine()}",
        f"- load average (1/5/15 min) before: {load_before}, after: {load_after}",
        "- method: fixed random gradients; one optimizer per candidate on its own model copy; `step()` timed "
        "interleaved round-robin in one process (order rotated, one warm-up step); medians.", "",
        *table(["model", "overrides", "total params", "matrix params", "of which stacked experts"], sizes),
        "", "## Matrix parameters (goal: MuonH ≤ 1.15× Muon)", "",
        *table(["model", "optimizer", "steps", "median ms", "vs Muon (ours)"], matrix_rows, "llrrr"),
        "", "## Whole model (`hyperp.build_optimizer`)", "",
        *table(["model", "optimizer", "steps", "median ms", "vs muon preset"], model_rows, "llrrr"),
    ]
    out = args.out or RESULTS / ("optim_step_quick.md" if args.quick else "optim_step.md")
    write(out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
