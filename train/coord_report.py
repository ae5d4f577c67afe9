"""The report of ``python -m train.coord_check``: verdict tables (markdown) and one figure.

Figure: one panel per quantity, value (log scale) against step, one line per width (top rows: every layer's residual
stream, attention and MLP branch, then the update ratio of each optimizer group) or per depth (bottom rows: the
last residual stream, the per-layer mean branch RMS, the update ratios). A flagged slope is titled in red.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

from train.config import RunConfig
from train.coord_check import EXPERT_DRIFT_LIMIT, Slope, Trace, depth_summary
from train.mfu import device_description
from train.transfer import derive_run

ExpertRow = tuple[Trace, str, float, bool]


def _slope_table(slopes: Sequence[Slope], traces: Sequence[Trace], axis: str, threshold: float) -> list[str]:
    if not slopes:
        return [f"(one {axis} only: no slope)"]
    xs = [t.width if axis == "width" else t.depth for t in traces]
    series = [t.series if axis == "width" else depth_summary(t) for t in traces]
    head = " | ".join(f"{'w' if axis == 'width' else 'L'}={x}" for x in xs)
    lines = [f"| quantity | {head} | slope | expected | flag (|slope − expected| > {threshold:g}) |",
             "|---" * (len(xs) + 4) + "|"]
    for s in slopes:
        values = " | ".join(f"{ser[s.quantity][-1]:.3g}" for ser in series)
        expected, verdict = ("–", "–") if s.expected is None else (f"{s.expected:+.1f}", "**FLAG**" if s.flag else "ok")
        lines.append(f"| {s.quantity} | {values} | {s.slope:+.3f} | {expected} | {verdict} |")
    return lines


def _expert_table(experts: Sequence[ExpertRow]) -> list[str]:
    if not experts:
        return ["No MoE layers."]
    lines = [f"| scale | layer | mode | on the sphere | max \\|‖W_e‖/‖W_e⁰‖ − 1\\| | flag (> {EXPERT_DRIFT_LIMIT:g}, "
             "per_expert on the sphere) |", "|---|---|---|---|---|---|"]
    for t, layer, drift, flag in experts:
        lines.append(f"| w={t.width} L={t.depth} | {layer} | {t.expert_mode} | {t.experts_on_sphere} | {drift:.2e} | "
                     f"{'**FLAG**' if flag else 'ok'} |")
    return lines


def render(base: RunConfig, widths: Sequence[Trace], depths: Sequence[Trace], slopes: Sequence[Slope],
           experts: Sequence[ExpertRow], args: argparse.Namespace, command: str, png: str) -> str:
    flags = sum(s.flag for s in slopes) + sum(e[3] for e in experts)
    m = base.model
    shape = (f"{m.n_layers} layers × {m.hidden}"
             + (f", {m.moe.num_experts} experts × {m.moe.expert_hidden} top-{m.moe.top_k}" if m.moe else "")
             + f", {base.optim.name}, parameterization {m.parameterization}, lr {derive_run(base).lr:.3g} at the base")
    lines = [f"# Coordinate check: `{args.config}` — **{'OK' if not flags else f'{flags} FLAGGED'}**", "",
             f"Command: `{command}`", "",
             f"Base: {shape}. {args.steps} steps per scale, monitors at every step; each scale trains with its HyperP "
             "lr (the base config is the `[hyperp]` base). Slope = least squares of log(value at the last step) "
             f"against log(width) or log(depth); flagged when |slope − expected| > {args.threshold:g}.", "",
             f"Machine: {device_description()}.", "",
             f"## Width (depth {widths[0].depth if widths else '–'}): expected slope 0", "",
             *_slope_table([s for s in slopes if s.axis == "width"], widths, "width", args.threshold), "",
             f"## Depth (width {depths[0].width if depths else '–'}): expected 0 for the last residual stream "
             "(1/√(2L) branch multiplier), −½ for the sphere groups' update ratio (lr ∝ √(L₀/L))", "",
             *_slope_table([s for s in slopes if s.axis == "depth"], depths, "depth", args.threshold), "",
             "## Per-expert sphere radius", "", *_expert_table(experts), "", f"![coordinate check]({png})", ""]
    return "\n".join(lines)


def _panels(widths: Sequence[Trace], depths: Sequence[Trace]) -> list[list[tuple[str, str, Sequence[Trace]]]]:
    """Rows of (axis, quantity, traces) panels."""
    rows: list[list[tuple[str, str, Sequence[Trace]]]] = []
    if widths:
        names = list(widths[0].series)
        for layer in sorted({n.rsplit("/", 1)[1] for n in names if "/layer_" in n}):
            rows.append([("width", q, widths) for q in (f"rms/{layer}", f"rms/attn/{layer}", f"rms/mlp/{layer}")])
        rows.append([("width", q, widths) for q in names if q.startswith("update_ratio/")])
    if len(depths) > 1:
        names = list(depth_summary(depths[0]))
        rows.append([("depth", q, depths) for q in names if not q.startswith("update_ratio/")])
        rows.append([("depth", q, depths) for q in names if q.startswith("update_ratio/")])
    return [r for r in rows if r]


def draw(widths: Sequence[Trace], depths: Sequence[Trace], slopes: Sequence[Slope], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    # Plain tick labels and a fixed layout: mathtext log labels and tight_layout cost seconds per panel.
    plain = FuncFormatter(lambda v, _: f"{v:.3g}")
    rows = _panels(widths, depths)
    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.6 * cols, 2.6 * len(rows)), squeeze=False)
    by_key = {(s.axis, s.quantity): s for s in slopes}
    for r, row in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            if c >= len(row):
                ax.axis("off")
                continue
            axis, q, traces = row[c]
            for t in traces:
                ys = t.series[q] if axis == "width" else depth_summary(t)[q]
                label = f"w={t.width}" if axis == "width" else f"L={t.depth}"
                ax.plot(range(1, len(ys) + 1), ys, label=label)
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(NullFormatter())
            s = by_key.get((axis, q))
            title = q if s is None or math.isnan(s.slope) else f"{q}  slope {s.slope:+.2f}"
            ax.set_title(title, fontsize=8, color="red" if s is not None and s.flag else "black")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
            if c == 0:
                ax.set_ylabel(f"vs {axis}", fontsize=8)
            if r == len(rows) - 1 or c == 0:
                ax.legend(fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.05, top=0.96, wspace=0.3, hspace=0.45)
    fig.savefig(path, dpi=70)
    plt.close(fig)


def write_report(base: RunConfig, widths: Sequence[Trace], depths: Sequence[Trace], slopes: Sequence[Slope],
                 experts: Sequence[ExpertRow], args: argparse.Namespace, command: str, targets: Sequence[Path]) -> None:
    from train.checkpoint import write_atomic

    text = ""
    for md in targets:
        md.parent.mkdir(parents=True, exist_ok=True)
        text = render(base, widths, depths, slopes, experts, args, command, md.with_suffix(".png").name)
        draw(widths, depths, slopes, md.with_suffix(".png"))
        write_atomic(md, text.encode())
    print(text)
