"""bf16 parity on a GPU: the loop / torch / megablocks dispatch backends on one routing, and our block vs transformers'.

``python benchmarks/gpu/parity.py [--quick] [--tokens N] [--out FILE] [--json FILE]``

At H=2048, E=64, k=8, I=1408 (Qwen3-30B-A3B's expert shape; ``--tokens`` default 8,192), fp32 master weights:

1. **Same routing.** The router runs once in fp32; every backend gets the same indices and gate weights. Under bf16
   autocast (training) the output and the gradients of x, the gates and the three expert weights of each backend
   are compared with the loop backend run in fp32 (TF32 off) as normwise relative errors, against the bounds
   derived in ``moe/dispatch/precision.py`` (10u outputs, 17u gradients, u = 2^-8). megablocks runs when it imports.
2. **transformers** ``Qwen3MoeSparseMoeBlock`` with our weights (softmax gate = its maths): in fp32 its output must
   equal ours (max relative error ≤ 1e-4; the tokens whose top-k sets differ are counted, expected 0). In bf16 its
   router computes logits in bf16, ours in fp32, so some tokens pick other experts: the agreeing fraction is
   reported, and on the agreeing tokens both bf16 outputs are compared with the fp32 reference.
Without CUDA it prints why and exits 0 (nothing written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))

from _common import command, first_line, machine, table, write, write_json  # noqa: E402
from moe_layer import Point, hf_block  # noqa: E402
from moe_layer_gpu import HF_FP32_TOL, no_tf32  # noqa: E402

from moe import MoEBlock, MoEConfig  # noqa: E402
from moe.dispatch import megablocks  # noqa: E402
from moe.dispatch.precision import BF16_GRAD_BOUND, BF16_OUT_BOUND, relative_error  # noqa: E402
from tests.moe.test_dispatch import GRAD_NAMES, dispatch_grads  # noqa: E402

POINT = Point(2048, 64, 8, 8192, 1408)
QUICK = Point(256, 8, 2, 1024, 128)


def same_routing(block: MoEBlock, x: torch.Tensor, backends: list[str]) -> list[list[str]]:
    """Section 1: rows [backend, output error, gradient errors...] and pass flags, vs the fp32 loop backend."""
    with torch.no_grad():
        stats = block.router(x)
    gates = block.gate_weights(stats.weights)
    with no_tf32():
        ref_out, ref_grads = dispatch_grads("loop", x, stats.indices, gates, block.experts)
    rows = []
    for backend in backends:
        try:
            out, grads = dispatch_grads(backend, x, stats.indices, gates, block.experts, autocast=torch.bfloat16)
        except Exception as err:  # noqa: BLE001 - one backend failing must not hide the others' results
            rows.append([backend, *["–"] * (1 + len(GRAD_NAMES)), f"**FAIL**: {first_line(err)}"])
            continue
        errs = [relative_error(out, ref_out)] + [relative_error(g, r) for g, r in zip(grads, ref_grads)]
        ok = errs[0] <= BF16_OUT_BOUND and all(e <= BF16_GRAD_BOUND for e in errs[1:]) and out.dtype == torch.bfloat16
        rows.append([backend, *(f"{e:.2e}" for e in errs), "pass" if ok else "**FAIL**"])
    return rows



def topk_sets(indices: torch.Tensor) -> torch.Tensor:
    return indices.sort(dim=-1).values


def versus_transformers(block: MoEBlock, x: torch.Tensor) -> dict[str, float]:
    """Section 2 (forward): HF fp32 (its eager experts: grouped_mm may lack fp32 kernels) vs ours fp32, and both in
    bf16 (HF's grouped_mm experts) on the tokens routed alike by all three."""
    hf = hf_block(block, "eager").to(x.device)
    with torch.no_grad(), no_tf32():
        ours32, stats = block(x)
        hf32 = hf(x[None])[0]
        disagree32 = int((topk_sets(hf.gate(x)[2]) != topk_sets(stats.indices)).any(-1).sum())
        hf16 = hf_block(block, "grouped_mm").to(x.device, torch.bfloat16)
        x16 = x.to(torch.bfloat16)
        ref, ref_stats = block(x16.float())  # fp32 on the bf16-rounded input: what both bf16 runs approximate
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            ours16, stats16 = block(x16)
        hf16_out = hf16(x16[None])[0]
        sets = [topk_sets(i) for i in (hf16.gate(x16)[2], stats16.indices, ref_stats.indices)]
        agree = ((sets[0] == sets[2]) & (sets[1] == sets[2])).all(-1)
    return {"hf_fp32_max_rel": float((hf32 - ours32).abs().max() / ours32.abs().max()),
            "tokens_topk_differ_fp32": disagree32, "bf16_agree_fraction": float(agree.float().mean()),
            "ours_bf16_rel_err_on_agreeing": relative_error(ours16[agree], ref[agree]),
            "hf_bf16_rel_err_on_agreeing": relative_error(hf16_out[agree], ref[agree])}


def check(args: argparse.Namespace) -> None:
    """Dry run (no CUDA): transformers has the block this compares against."""
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock  # noqa: F401


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (smoke run)")
    parser.add_argument("--tokens", type=int, default=None, help="tokens (default 8192)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a smoke run of this script")
    parser.add_argument("--out", default=None, help="markdown report (default: printed only)")
    parser.add_argument("--json", default=None, help="also write the results as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("parity: no CUDA device; skipped (nothing written)")
        return 0
    p = QUICK if args.quick else POINT
    tokens = args.tokens or p.tokens
    torch.manual_seed(0)
    block = MoEBlock(p.hidden, MoEConfig(p.experts, p.top_k, p.expert_hidden, gate="softmax", backend="loop"))
    block.to(args.device)
    x = torch.randn(tokens, p.hidden, device=args.device)
    mb_reason = megablocks.unavailable_reason() if args.device == "cuda" else "not on CUDA"
    backends = ["loop", "torch"] + (["megablocks"] if mb_reason is None else [])
    rows = same_routing(block, x, backends)
    try:
        hf = versus_transformers(block, x)
        hf_ok = hf["hf_fp32_max_rel"] <= HF_FP32_TOL and hf["ours_bf16_rel_err_on_agreeing"] <= BF16_OUT_BOUND
    except Exception as err:  # noqa: BLE001 - keep section 1's results
        hf, hf_ok = {"error": first_line(err)}, False
    argv_used = list(argv if argv is not None else sys.argv[1:])
    lines = [
        "# bf16 parity on GPU: dispatch backends on one routing, our block vs transformers", "",
        f"- command: `{command('gpu/parity.py', argv_used)}`", f"- machine: {machine(args.device)}",
        f"- point: H={p.hidden} E={p.experts} k={p.top_k} I={p.expert_hidden}, {tokens} tokens; fp32 master weights",
        f"- megablocks: {'runs' if mb_reason is None else 'not run: ' + mb_reason}", "",
        f"## Same routing, bf16 autocast vs the fp32 loop backend (normwise relative; bounds {BF16_OUT_BOUND:.4f} "
        f"output, {BF16_GRAD_BOUND:.4f} gradients)", "",
        *table(["backend", "output", *(f"grad {n}" for n in GRAD_NAMES), "verdict"], rows),
        "", "## transformers Qwen3MoeSparseMoeBlock (same weights)", "",
        *table(["measure", "value"], [[k, f"{v:.3e}" if isinstance(v, float) else v] for k, v in hf.items()]),
        "", f"Verdict vs transformers: {'pass' if hf_ok else '**FAIL**'} (fp32 max relative ≤ {HF_FP32_TOL}; ours in "
        f"bf16 on agreeing tokens ≤ {BF16_OUT_BOUND:.4f}).",
    ]
    if args.out:
        write(Path(args.out), lines)
    else:
        print("\n".join(lines))
    write_json(args.json, {"same_routing": rows, "transformers": hf, "megablocks_unavailable": mb_reason,
                           "pass": all(r[-1] == "pass" for r in rows) and hf_ok})
    return 0


if __name__ == "__main__":
    sys.exit(main())
