"""Learning-rate transfer (issue 10 item 3): width and depth families × a log₂ lr grid, MuonH+HyperP vs AdamW (SP).

Exact commands (run from the repo root; the whole family ≈ 25 min on 2 shared CPU cores)::

    # width family (depth 2): widths 32, 64, 128 (head_dim 32, 1/2/4 heads, MLP 4×width)
    python -m train.sweep --config configs/experiments/exp-dense.toml --grid model.hidden=32,64,128 \
        --zip model.n_heads=1,2,4 --zip model.mlp_hidden=128,256,512 --grid optim.lr=0.04,0.08,0.16,0.32 \
        --set hyperp.base_width=32 --set hyperp.base_depth=1 --set train.eval_every=50 --max-steps 200 \
        --out sweeps/lr-width-muonh --jobs 2
    python -m train.sweep --config configs/experiments/exp-dense.toml --grid model.hidden=32,64,128 \
        --zip model.n_heads=1,2,4 --zip model.mlp_hidden=128,256,512 --grid optim.lr=0.003,0.006,0.012,0.024 \
        --set 'optim.name="adamw"' --set 'model.parameterization="standard"' --set train.eval_every=50 --max-steps 200 \
        --out sweeps/lr-width-adamw --jobs 2
    # depth family (width 64): depths 1, 4 (+ depth 2 = the width-64 runs above)
    python -m train.sweep --config configs/experiments/exp-dense.toml --grid model.n_layers=1,4 \
        --grid optim.lr=0.04,0.08,0.16,0.32 --set hyperp.base_width=32 --set hyperp.base_depth=1 \
        --set train.eval_every=50 --max-steps 200 --out sweeps/lr-depth-muonh --jobs 2
    python -m train.sweep --config configs/experiments/exp-dense.toml --grid model.n_layers=1,4 \
        --grid optim.lr=0.003,0.006,0.012,0.024 --set 'optim.name="adamw"' \
        --set 'model.parameterization="standard"' --set train.eval_every=50 --max-steps 200 \
        --out sweeps/lr-depth-adamw --jobs 2
    # AdamW's optima sat on the grid edges at width 32/128 and depth 1/4: one more point beyond each edge
    python -m train.sweep --config configs/experiments/exp-dense.toml --grid model.hidden=32,128 \
        --zip model.n_heads=1,4 --zip model.mlp_hidden=128,512 --zip optim.lr=0.048,0.0015 \
        --set 'optim.name="adamw"' --set 'model.parameterization="standard"' --set train.eval_every=50 \
        --max-steps 200 --out sweeps/lr-width-adamw --jobs 2
    python -m train.sweep --config configs/experiments/exp-dense.toml --grid model.n_layers=1,4 \
        --zip optim.lr=0.048,0.0015 --set 'optim.name="adamw"' --set 'model.parameterization="standard"' \
        --set train.eval_every=50 --max-steps 200 --out sweeps/lr-depth-adamw --jobs 2
    python benchmarks/experiments/lr_transfer.py

MuonH's x-axis is the ONE base lr η₀ (base = width 32, depth 1); each run's actual lr is η₀·√(1/L) from
``hyperp.transfer`` (width factor 1; same tokens and batch across the family, so those factors are 1).
AdamW (standard parameterization, wd 0.1) sweeps its raw lr. Optimum shift = difference, in grid steps (factor 2),
of the argmin lr between the smallest and the largest member of a family; a parabola fit in log₂ lr through the
best point and its neighbours gives a fractional shift as well.
"""

from __future__ import annotations

import math

from _exp import RESULTS, fmt, load_sweep, machine, plt, sweep_time


VERDICT = """\
- **Transfer held much better under MuonH + HyperP than under AdamW (SP)**, which is the papers' claim in
  direction: over a 4× span, one MuonH base lr moved by 1 grid step (×2) across width and by 1 step across depth,
  while AdamW's optimum moved by 3 steps (×8) across both width (0.024 → 0.003) and depth (0.024 → 0.003).
- **But not to zero shift**: MuonH's optimum fell from base 0.16 (width 32) to 0.08 (width 128) — parabola
  −1.4 steps — where HyperP predicts no width factor; and across depth it rose by one step (0.08 → 0.16 base lr),
  i.e. the *applied* lr (base × √(1/L)) stayed at 0.08 from depth 1 to 4: at this scale the √(d₀/L) depth rule
  over-corrects by about one ×2 step. Both shifts are one grid step with one seed, and width 32 is a degenerate
  1-head model, so this is weak evidence either way.
- MuonH's loss-vs-lr curves are smooth U-shapes; AdamW's are bumpy (depth 1: 5.39, 5.42, 5.48, 5.36 over
  3e-3 … 2.4e-2), so AdamW argmins are less certain than MuonH's. Larger models also trained better under MuonH at
  its best lr (width 128: 4.69 vs AdamW 5.30).
"""


def fit_opt(pts: list[tuple[float, float]]) -> tuple[float, float]:
    """(grid argmin lr, parabola-vertex lr in log₂) from [(lr, loss)] (nan losses = diverged, skipped)."""
    pts = sorted((lr, l) for lr, l in pts if math.isfinite(l))
    if not pts:
        return math.nan, math.nan
    i = min(range(len(pts)), key=lambda j: pts[j][1])
    best = pts[i][0]
    if 0 < i < len(pts) - 1:
        (x0, y0), (x1, y1), (x2, y2) = [(math.log2(lr), l) for lr, l in pts[i - 1:i + 2]]
        denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
        b = (x2 ** 2 * (y0 - y1) + x1 ** 2 * (y2 - y0) + x0 ** 2 * (y1 - y2)) / denom
        if a > 0:
            return best, 2 ** (-b / (2 * a))
    return best, best


def main() -> None:
    fams = {}
    sw = {k: load_sweep(k) for k in ("lr-width-muonh", "lr-width-adamw", "lr-depth-muonh", "lr-depth-adamw")}
    for opt in ("muonh", "adamw"):
        width = {}
        for r in sw[f"lr-width-{opt}"]:
            width.setdefault(r["params"]["hidden"], []).append(r)
        depth = {}
        for r in sw[f"lr-depth-{opt}"]:
            depth.setdefault(r["params"]["n_layers"], []).append(r)
        if 64 in width:
            depth[2] = width[64]
        fams[opt] = {"width": width, "depth": depth}

    lines = ["# Learning-rate transfer across width and depth (tiny shapes)", "",
             "Preset `configs/experiments/exp-dense.toml` (dense Qwen3, bpe-2k — a 2k BPE trained on the same 21 MB "
             "corpus so that the vocab-8192 embedding/head does not dominate these tiny models), seq 64 × batch 16, "
             "200 steps (205k tokens), linear decay to 0.1×, no warmup, one seed. Width family: width 32/64/128 at "
             "depth 2 (4× span, 2× steps — 3 widths 4× apart each would need width 512, out of reach on 2 cores); "
             "depth family: depth 1/2/4 at width 64 (4× span).", "",
             "MuonH + HyperP: the x-axis is the single base lr η₀ for base (width 32, depth 1); "
             "`hyperp.transfer` scales it by √(1/L) per run. AdamW: standard parameterization (N(0,0.02) init, no "
             "residual scaling), wd 0.1, raw lr. The 4-point grids (×2 apart) were placed around the optima the 300-step "
             "speedup sweep found at width 64 / depth 2 (MuonH lr 0.08 = base 0.11 after the √(1/2) depth factor; AdamW "
             "0.012); 5 points were planned and cut to 4 for time.", "",
             f"Machine: {machine()}.", "",
             "Run time: " + "; ".join(f"{k}: {sweep_time(v)}" for k, v in sw.items()) + ".", ""]
    pyplot = plt()
    fig, axes = pyplot.subplots(2, 2, figsize=(10, 7))
    shifts = []
    for row, opt in enumerate(("muonh", "adamw")):
        for col, fam in enumerate(("width", "depth")):
            ax = axes[row][col]
            members = fams[opt][fam]
            if not members:
                ax.set_title(f"{opt} {fam}: not run")
                continue
            grid = sorted({r["params"]["lr"] for ms in members.values() for r in ms})
            lines += [f"## {opt} — {fam} family", "",
                      f"| {fam} | " + " | ".join(f"lr {lr:g}" for lr in grid) + " | argmin lr | parabola vertex |",
                      "|---|" + "---|" * (len(grid) + 2)]
            opts = {}
            for m in sorted(members):
                rs = sorted(members[m], key=lambda r: r["params"]["lr"])
                pts = [(r["params"]["lr"], math.nan if r["diverged"] else r["final_val"]) for r in rs]
                best, vertex = fit_opt(pts)
                opts[m] = (best, vertex)
                by_lr = dict(pts)
                lines.append(f"| {m} | " + " | ".join(fmt(by_lr.get(lr, float("nan"))) for lr in grid)
                             + f" | {best:g} | {vertex:.3g} |")
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{fam} {m}")
            lo, hi = min(opts), max(opts)
            grid_shift = math.log2(opts[hi][0] / opts[lo][0])
            frac_shift = math.log2(opts[hi][1] / opts[lo][1])
            shifts.append((opt, fam, lo, hi, grid_shift, frac_shift))
            lines += ["", f"Optimum shift {fam} {lo} → {hi}: **{grid_shift:+.0f} grid steps** (parabola vertex "
                          f"{frac_shift:+.2f} steps of ×2).", ""]
            ax.set_xscale("log", base=2)
            ax.set_xlabel("base lr η₀ (transferred)" if opt == "muonh" else "lr")
            ax.set_ylabel("final val loss")
            ax.set_title(f"{'MuonH+HyperP' if opt == 'muonh' else 'AdamW (SP)'}: {fam}")
            ys = [r["final_val"] for ms in members.values() for r in ms if not r["diverged"]]
            if ys:
                ax.set_ylim(min(ys) - 0.05, min(max(ys), min(ys) + 1.5) + 0.05)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "lr_transfer.png", dpi=80)
    lines += ["![lr transfer](lr_transfer.png)", "", "## Summary", "", "| optimizer | family | from → to | "
              "optimum shift (grid steps of ×2) | parabola vertex shift |", "|---|---|---|---|---|"]
    lines += [f"| {o} | {f} | {a} → {b} | {g:+.0f} | {s:+.2f} |" for o, f, a, b, g, s in shifts]
    lines += ["", "## Verdict (one seed, 200 steps; a loss difference below ~0.05 is noise here)", "", VERDICT]
    (RESULTS / "lr_transfer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
