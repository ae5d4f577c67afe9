"""The report of ``python -m train.transfer_check``: markdown tables with the verdicts, and one PNG.

The PNG has one panel per axis: final val loss against the *base* lr (each scale trained at base lr × its HyperP
factor), one curve per scale, the rule's prediction (the base scale's optimum) as a dashed line and each scale's
optimum as a star.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from train.mfu import device_description
from train.transfer import run_scale
from train.transfer_check import Check, Member, axis_value, scale_label
from train.transfer_verdict import Judgement, Optimum, combine, meaningful_difference

Row = tuple[Member, Optimum | None, Judgement | None]
INVOCATIONS = "invocations.jsonl"


def _lr(check: Check, step: float) -> str:
    return f"{check.centre * 2.0**step:.3g}"


def _optimum(check: Check, opt: Optimum | None) -> str:
    if opt is None:
        return "diverged"
    if opt.lo == -math.inf:
        return f"≤ {_lr(check, opt.hi)} (grid edge)"
    if opt.hi == math.inf:
        return f"≥ {_lr(check, opt.lo)} (grid edge)"
    return _lr(check, opt.estimate) + ("" if opt.lo == opt.hi else " (±½ step)")


def _shift(j: Judgement) -> str:
    if math.isnan(j.shift) or (j.shift_lo == -math.inf and j.shift_hi == math.inf):
        return "unknown (both at a grid edge)" if not math.isnan(j.shift) else "–"
    if j.shift_lo == j.shift_hi:
        return f"{j.shift:+.2f}"
    if j.shift_lo == -math.inf:
        return f"≤ {j.shift_hi:+.1f}"
    if j.shift_hi == math.inf:
        return f"≥ {j.shift_lo:+.1f}"
    return f"{j.shift_lo:+.1f} … {j.shift_hi:+.1f}"


def _loss(value: float | None) -> str:
    return "" if value is None else "diverged" if math.isinf(value) else f"{value:.3f}"


def _value(check: Check, member: Member, axis: str) -> str:
    return member.label if member.exponent != 0 else scale_label(axis, axis_value(check.base, axis)) + " (base)"


def axis_table(check: Check, axis: str, rows: list[Row]) -> list[str]:
    ks = sorted({k for member, _, _ in rows for k in check.steps[member]})
    lines = ["| scale | lr factor | " + " | ".join(f"lr {_lr(check, k)}" for k in ks)
             + " | best base lr | shift (steps) | regret | verdict |", "|---" * (len(ks) + 6) + "|"]
    for member, opt, j in rows:
        curve = check.curve(member)
        cells = [_value(check, member, axis), f"{member.factor:.3f}", *(_loss(curve.get(k)) for k in ks),
                 _optimum(check, opt)]
        if j is None:
            cells += ["prediction (smallest scale)", "–", "–"]
        else:
            regret = "–" if math.isnan(j.regret) else "inf" if math.isinf(j.regret) else f"{j.regret:.3f}"
            cells += [_shift(j), regret, f"**{j.verdict}** ({j.why})"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _noise_line(check: Check) -> str:
    losses = check.seed_losses()
    if len(losses) < 2:
        return "Noise: not measured (one seed): differences are judged by the shift alone."
    delta = meaningful_difference(losses)
    return (f"Noise: the base scale at base lr {_lr(check, check.seed_step)} with {len(losses)} seeds gave "
            f"{', '.join(f'{v:.3f}' for v in losses)}: σ = {delta / (2 * math.sqrt(2)):.4f}, so a loss difference "
            f"between two runs is meaningful above 2·√2·σ = **{delta:.4f}**.")


def _time_line(check: Check) -> str:
    """Wall time over every invocation that trained (a resumed check adds up its parts), from ``invocations.jsonl``."""
    path = check.out / INVOCATIONS
    parts = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    parts = [p for p in parts if p["trained"]]
    total = sum(p["seconds"] for p in parts)
    return (f"Wall time: {total / 60:.1f} min for {sum(p['trained'] for p in parts)} runs "
            f"({len(parts)} invocation(s) that trained; load average at the end of each: "
            f"{', '.join(p['load'] for p in parts) or '–'}).")


def render(check: Check, command: str, png: str) -> tuple[str, str]:
    """(markdown, overall verdict)."""
    judgements = check.judgements()
    verdicts = {axis: combine(j.verdict for _, _, j in rows if j is not None) for axis, rows in judgements.items()}
    overall = combine(verdicts.values())
    b, scale = check.base, run_scale(check.base)
    moe = b.model.moe
    shape = (f"{b.model.n_layers} layers × {b.model.hidden}, " +
             (f"{moe.num_experts} experts × {moe.expert_hidden} top-{moe.top_k}" if moe else f"MLP {b.model.mlp_hidden}")
             + f", {b.optim.name}, parameterization {b.model.parameterization}, {b.train.max_steps} steps × "
             f"{scale.batch_tokens:g} tokens")
    runs = sum(check.loss(p) is not None for p in check.points())
    lines = [f"# HyperP transfer check: `{check.config}` — **{overall}**", "", f"Command: `{command}`", "",
             f"Base: {shape}. Grid: base lrs {_lr(check, min(check.grid))} … {_lr(check, max(check.grid))}, ×2 apart "
             f"(centre {check.centre:.3g}, the config's lr)"
             + (f", extended by up to {check.extend} beyond an edge that holds the optimum" if check.extend else "")
             + ". Every scale trains at base lr × its HyperP factor (`lr factor`: √(L₀/L)·(T/T₀)^−0.32; "
             "width and granularity ×1), so the rule predicts the same best base lr at every scale; the prediction "
             "is the optimum of each axis' smallest scale (tune small, transfer up). Shift = optimum − prediction in "
             "×2 grid steps (parabola vertex in log₂ lr; ≤/≥ at a grid edge); regret = loss at the predicted lr − "
             f"best loss. Tolerance: |shift| ≤ {check.tolerance:g} step.", "",
             _noise_line(check), "",
             f"Machine: {device_description()}; {check.jobs} run(s) at a time. {_time_line(check)} "
             f"Runs recorded: {runs}.", "",
             "| axis | verdict | shift of each scale (steps) |", "|---|---|---|"]
    for axis, rows in judgements.items():
        shifts = [_shift(j) for _, _, j in rows if j is not None]
        lines.append(f"| {axis} | **{verdicts[axis]}** | {', '.join(shifts)} |")
    for axis, rows in judgements.items():
        lines += ["", f"## {axis} — {verdicts[axis]}", "", *axis_table(check, axis, rows)]
    lines += ["", f"![transfer check]({png})", ""]
    return "\n".join(lines), overall


def draw(check: Check, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judgements = check.judgements()
    fig, axes = plt.subplots(1, len(judgements), figsize=(4.6 * len(judgements), 3.8), squeeze=False)
    for ax, (axis, rows) in zip(axes[0], judgements.items()):
        anchor = rows[0][1]
        finite: list[float] = []
        for member, opt, _ in rows:
            curve = {k: v for k, v in sorted(check.curve(member).items()) if math.isfinite(v)}
            finite += curve.values()
            line, = ax.plot([check.centre * 2.0**k for k in curve], list(curve.values()), "o-", ms=3,
                            label=f"{_value(check, member, axis)} ×{member.factor:.2f}")
            if opt is not None:
                ax.plot([check.centre * 2.0**opt.estimate], [opt.loss], "*", ms=11, color=line.get_color())
        if anchor is not None:
            ax.axvline(check.centre * 2.0**anchor.estimate, ls="--", color="k", lw=1, label="prediction (smallest)")
        if finite:
            ax.set_ylim(min(finite) - 0.03, min(max(finite), min(finite) + 1.5) + 0.03)
        ax.set_xscale("log", base=2)
        lrs = sorted({check.centre * 2.0**k for member, _, _ in rows for k in check.steps[member]})
        ax.set_xticks(lrs, [f"{lr:.3g}" for lr in lrs], fontsize=7)
        ax.minorticks_off()
        verdict = combine(j.verdict for _, _, j in rows if j is not None)
        ax.set_title(f"{axis}: {verdict}")
        ax.set_xlabel("base lr (run lr = base lr × HyperP factor)")
        ax.set_ylabel("final val loss")
        ax.legend(fontsize=7)
    fig.suptitle(f"transfer check {check.config}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def log_invocation(check: Check, seconds: float) -> None:
    """Append this invocation's wall time and trained runs to ``OUT/invocations.jsonl``."""
    load = f"{os.getloadavg()[0]:.1f}"
    with open(check.out / INVOCATIONS, "a") as fh:
        fh.write(json.dumps({"time": time.time(), "seconds": seconds, "trained": check.trained, "load": load}) + "\n")


def write_report(check: Check, command: str, results: str | None) -> str:
    """Write ``OUT/transfer_check.{md,png}`` (and ``results`` + its PNG); print the report; return the verdict."""
    from train.checkpoint import write_atomic

    targets = [check.out / "transfer_check.md"] + ([Path(results)] if results else [])
    overall = ""
    for md in targets:
        md.parent.mkdir(parents=True, exist_ok=True)
        text, overall = render(check, command, md.with_suffix(".png").name)
        draw(check, md.with_suffix(".png"))
        write_atomic(md, text.encode())
    print(text)
    return overall
