"""MoE layer forward+backward throughput, ours vs transformers' ``Qwen3MoeSparseMoeBlock`` vs a dense SwiGLU floor.

``python benchmarks/moe_layer.py [--quick] [--repeats N] [--points headline|sweep] [--out FILE]``

Candidates, all on identical weights and inputs (fp32, CPU), timed interleaved in one process:

- ``ours auto``: :class:`moe.MoEBlock` with ``backend="torch"`` and its per-call layout policy (the CPU default);
  ``ours grouped`` / ``ours padded``: the same with ``moe.dispatch.torch.FORCE_LAYOUT`` pinned;
  ``ours loop``: the reference per-expert loop backend (``--loop`` and ``--quick`` only; slow by design).
- ``hf eager`` / ``hf grouped_mm``: transformers' block, ``config._experts_implementation`` set to each.
- ``dense``: SwiGLU(hidden, k·expert_hidden) on the same tokens — the same expert FLOPs without routing; the
  practical floor.

Our block uses ``gate="softmax"`` (HF's math); its output is checked against HF's to 1e-4 before timing.
Writes ``benchmarks/results/moe_layer.md`` (``moe_layer_quick.md`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from _common import RESULTS, command, interleaved, loadavg, machine, median, table, write

from moe import MoEBlock
from moe.config import MoEConfig
from moe.dispatch import torch as torch_dispatch
from moe.experts import SwiGLU


@dataclass(frozen=True)
class Point:
    hidden: int
    experts: int
    top_k: int
    tokens: int
    expert_hidden: int

    def label(self) -> str:
        return f"H={self.hidden} I={self.expert_hidden} E={self.experts} k={self.top_k} T={self.tokens}"


HEADLINE = Point(512, 32, 4, 4096, 256)
QUICK = Point(64, 4, 2, 256, 32)


def sweep() -> list[Point]:
    """The headline point, then one axis at a time around it (hidden 256–1024, E 8–64, k 2–8, tokens 2k–16k)."""
    h = HEADLINE
    points = [h]
    points += [Point(H, h.experts, h.top_k, h.tokens, H // 2) for H in (256, 1024)]
    points += [Point(h.hidden, E, h.top_k, h.tokens, h.expert_hidden) for E in (8, 64)]
    points += [Point(h.hidden, h.experts, k, h.tokens, h.expert_hidden) for k in (2, 8)]
    points += [Point(h.hidden, h.experts, h.top_k, T, h.expert_hidden) for T in (2048, 16384)]
    return points


def hf_block(ours: MoEBlock, impl: str) -> nn.Module:
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    c = ours.cfg
    config = Qwen3MoeConfig(hidden_size=ours.hidden, moe_intermediate_size=c.expert_hidden,
                            num_experts=c.num_experts, num_experts_per_tok=c.top_k, norm_topk_prob=True)
    config._experts_implementation = impl
    block = Qwen3MoeSparseMoeBlock(config)
    with torch.no_grad():
        block.gate.weight.copy_(ours.router.weight)
        block.experts.gate_up_proj.copy_(torch.cat([ours.experts.w_gate, ours.experts.w_up], dim=1))
        block.experts.down_proj.copy_(ours.experts.w_down)
    return block


@contextlib.contextmanager
def layout(name: str | None) -> Iterator[None]:
    old = torch_dispatch.FORCE_LAYOUT
    torch_dispatch.FORCE_LAYOUT = name
    try:
        yield
    finally:
        torch_dispatch.FORCE_LAYOUT = old


def fwd_bwd(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, ours: bool, force: str | None = None
            ) -> Callable[[], None]:
    params = list(module.parameters())

    def run() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        with layout(force):
            out = module(x)
            if ours:
                out = out[0]
            out.backward(grad)

    return run


@dataclass
class Setup:
    """Identical weights and input for every candidate: our block (+ other backends), HF's two blocks, dense."""

    ours: MoEBlock
    extra: dict[str, MoEBlock]
    hf_eager: nn.Module
    hf_gmm: nn.Module
    dense: nn.Module
    x: torch.Tensor
    grad: torch.Tensor

    def hf_error(self) -> float:
        """Max abs error of our blocks and HF eager vs HF grouped_mm on ``x``."""
        with torch.no_grad():
            ref = self.hf_gmm(self.x).float()
            outs = [self.ours(self.x)[0], self.hf_eager(self.x), *(m(self.x)[0] for m in self.extra.values())]
            return max((o.float() - ref).abs().max().item() for o in outs)

    def fns(self, backends: tuple[str, ...]) -> dict[str, Callable[[], None]]:
        fns = {}
        for b in backends:
            if b in ("auto", "grouped", "padded"):
                fns[f"ours {b}"] = fwd_bwd(self.ours, self.x, self.grad, True, None if b == "auto" else b)
        for name, m in self.extra.items():
            fns[name] = fwd_bwd(m, self.x, self.grad, True)
        return fns | {
            "hf eager": fwd_bwd(self.hf_eager, self.x, self.grad, False),
            "hf grouped_mm": fwd_bwd(self.hf_gmm, self.x, self.grad, False),
            "dense": fwd_bwd(self.dense, self.x, self.grad, False),
        }


def setup(p: Point, with_loop: bool, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32,
          backends: tuple[str, ...] = ("auto", "grouped", "padded")) -> Setup:
    torch.manual_seed(seed)
    ours = MoEBlock(p.hidden, MoEConfig(p.experts, p.top_k, p.expert_hidden, gate="softmax", backend="torch"))
    hf_eager, hf_gmm = hf_block(ours, "eager"), hf_block(ours, "grouped_mm")
    dense = SwiGLU(p.hidden, p.top_k * p.expert_hidden)
    extra: dict[str, MoEBlock] = {}
    if "megablocks" in backends:
        extra["ours megablocks"] = MoEBlock(p.hidden, MoEConfig(p.experts, p.top_k, p.expert_hidden, gate="softmax",
                                                                backend="megablocks"))
    if with_loop:
        extra["ours loop"] = MoEBlock(p.hidden, MoEConfig(p.experts, p.top_k, p.expert_hidden, gate="softmax",
                                                          backend="loop"))
    for m in extra.values():
        m.load_state_dict(ours.state_dict())
    for m in [ours, hf_eager, hf_gmm, dense, *extra.values()]:
        m.to(device=device, dtype=dtype)
    for m in [ours, *extra.values()]:
        m.router.float()  # our router computes in fp32 whatever the activation dtype
    x = torch.randn(1, p.tokens, p.hidden, device=device, dtype=dtype, requires_grad=True)  # HF wants (B, T, H)
    grad = torch.randn(1, p.tokens, p.hidden, device=device, dtype=dtype)
    return Setup(ours, extra, hf_eager, hf_gmm, dense, x, grad)


def candidates(p: Point, with_loop: bool, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32,
               backends: tuple[str, ...] = ("auto", "grouped", "padded"), tol: float = 1e-4
               ) -> tuple[dict[str, Callable[[], None]], float]:
    """Fwd+bwd closures over identical weights/input; asserts our block equals HF's (max abs error ≤ tol)."""
    s = setup(p, with_loop, seed, device, dtype, backends)
    err = s.hf_error()
    if err > tol:
        raise AssertionError(f"{p.label()}: our block differs from transformers' by {err:.2e} (> {tol})")
    return s.fns(backends), err


def auto_choice(p: Point, seed: int = 0) -> str:
    """Which layout the auto policy picks for this point's routing (same seed → same router → same counts)."""
    torch.manual_seed(seed)
    ours = MoEBlock(p.hidden, MoEConfig(p.experts, p.top_k, p.expert_hidden, gate="softmax", backend="torch"))
    x = torch.randn(1, p.tokens, p.hidden)
    with torch.no_grad():
        stats = ours.router(x.view(-1, p.hidden))
    return torch_dispatch.choose_layout(stats.indices, p.experts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one tiny point, 2 repeats (smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds at the headline point")
    parser.add_argument("--points", choices=("headline", "sweep"), default="sweep")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--loop", action="store_true", help="also time the reference loop backend (slow)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    points = [QUICK] if args.quick else ([HEADLINE] if args.points == "headline" else sweep())
    base_repeats = args.repeats or (1 if args.quick else 9)
    load_before = loadavg()
    rows, details = [], []
    for p in points:
        scale = p.tokens * p.top_k * p.hidden * p.expert_hidden / (HEADLINE.tokens * 4 * 512 * 256)
        repeats = base_repeats if args.quick else max(3, round(base_repeats / max(scale, 1.0)))
        fns, err = candidates(p, with_loop=args.quick or args.loop)
        times = interleaved(fns, repeats, warmup=1)
        med = {name: median(ts) for name, ts in times.items()}
        dense = med["dense"]
        auto = med["ours auto"]
        rows.append([
            p.label(), auto_choice(p), f"{auto * 1e3:.0f}", f"{dense * 1e3:.0f}", f"{auto / dense:.2f}×",
            f"{med['hf grouped_mm'] / auto:.2f}×", f"{med['hf eager'] / auto:.2f}×",
            f"{med['ours grouped'] / dense:.2f}×", f"{med['ours padded'] / dense:.2f}×",
            f"{p.tokens / auto:,.0f}", f"{err:.1e}",
        ])
        details.append((p, repeats, med, times))
        print(rows[-1], flush=True)
    load_after = loadavg()

    argv_used = list(argv if argv is not None else sys.argv[1:])
    lines = [
        "# MoE layer: forward+backward, ours vs transformers vs dense (fp32, CPU)", "",
        f"- command: `{command('moe_layer.py', argv_used)}`",
        f"- machine: {machine()}",
        f"- load average (1/5/15 min) before: {load_before}, after: {load_after}",
        "- method: all candidates on identical weights and input, timed interleaved round-robin in one process "
        "(order rotated each round, one warm-up round); medians. Ratios are the result; absolute ms are "
        "as-measured under the load above.",
        "- candidates: `ours auto` = `MoEBlock(backend=\"torch\")` with its layout policy (the CPU default), "
        "`ours grouped`/`ours padded` = the layout pinned, `hf eager`/`hf grouped_mm` = transformers "
        "`Qwen3MoeSparseMoeBlock` with `config._experts_implementation`, `dense` = SwiGLU(H, k·I) on the same "
        "tokens (same expert FLOPs, no routing). Our block is checked equal to HF's (max abs error column).",
        "", "## Summary (goal: auto/dense ≤ 1.3×, ≥ 1.4× HF grouped_mm, ≥ 2.5× HF eager)", "",
        *table(["point", "auto picks", "ours auto ms", "dense ms", "auto / dense", "HF gmm / auto",
                "HF eager / auto", "grouped / dense", "padded / dense", "tokens/s (auto)", "max |Δ| vs HF"], rows),
        "", "## All medians (ms) and ratio to dense", "",
    ]
    names = list(details[0][2])
    detail_rows = []
    for p, repeats, med, _ in details:
        detail_rows.append([p.label(), repeats] + [f"{med[n] * 1e3:.0f} ({med[n] / med['dense']:.2f}×)"
                                                   if n in med else "–" for n in names])
    lines += table(["point", "rounds", *names], detail_rows)
    out = args.out or RESULTS / ("moe_layer_quick.md" if args.quick else "moe_layer.md")
    write(out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
