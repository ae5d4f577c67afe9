"""``python -m train.plot RUN_DIR [RUN_DIR ...] [--metrics GLOB ...] [--out DIR]``: monitor plots comparing runs.

Reads each run's ``metrics.jsonl`` and writes one PNG per indicator family (loss, Z-values, RMS, outliers, expert
load, router, throughput and MFU, optimizer health, per-source validation loss and bits per byte, balance and its
controller), a layer × expert heatmap of the last expert-load window, and ``summary.md`` with the maximum of each
indicator per run (SPEC §5: under HyperP these should stay bounded as training goes on).
Per-layer metrics (``.../layer_XX``) share a panel: one line per layer, dark → light with depth; runs differ by
line style (or colour, when a panel has one line per run).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from train.cli import output_dir, run_cli  # noqa: E402
from train.errors import DataError  # noqa: E402

# family → metric globs (a metric goes to the first family that matches)
FAMILIES: dict[str, tuple[str, ...]] = {
    "loss": ("train/loss", "val/loss", "moe/aux_loss", "moe/z_loss"),
    "z_values": ("monitor/z_*", "monitor/attn_logit_max/*"),
    "rms": ("monitor/rms/*",),
    "outliers": ("monitor/outlier_frac/*", "monitor/max_over_rms/*", "monitor/kurtosis/*", "monitor/outlier_pct/*"),
    "expert_load": ("monitor/expert_load/*",),
    "router": ("monitor/router/*",),
    "throughput": ("train/tokens_per_s", "train/mfu"),
    "optimizer": ("train/grad_norm", "monitor/grad_norm/*", "monitor/weight_norm/*", "monitor/update_ratio/*",
                  "monitor/sphere_norm_drift"),
    "eval": ("val/bpb", "val/*/loss", "val/*/bpb"),  # per-source validation (train.eval.validation)
    "balance": ("moe/maxvio", "moe/balance/*"),  # the step's MaxVio and moe.balance_target's controller
}
_GROUP_PANELS = ("monitor/grad_norm/", "monitor/weight_norm/", "monitor/update_ratio/")
_LAYER = re.compile(r"^(.*)/(layer_\d+)$")
_SOURCE = re.compile(r"^val/(.+)/(loss|bpb)$")  # val/<source>/<kind>: one panel per kind, one line per source
_SHARED_PANELS = {"val/bpb": ("val/bpb by source", "all"), "moe/maxvio": ("moe/maxvio", "step"),
                  "moe/balance/maxvio_ema": ("moe/maxvio", "controller EMA"), "moe/balance/target": ("moe/maxvio", "target")}
_STYLES = ("-", "--", ":", "-.")


@dataclass
class Run:
    name: str
    path: Path
    series: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    alarms: list[dict] = field(default_factory=list)


def _float(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return None
    try:
        return float(v)
    except ValueError:
        return None


def load_run(path: Path, name: str | None = None) -> Run:
    file = Path(path) / "metrics.jsonl"
    if not file.is_file():
        raise DataError(f"{file} not found (is {path} a run directory?)")
    run = Run(name or Path(path).resolve().name, Path(path))
    data: dict[str, dict[int, float]] = defaultdict(dict)
    for line in file.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if "event" in rec:
            if rec.get("event") == "alarm":
                run.alarms.append(rec)
            continue
        step = rec.get("step")
        if step is None:
            continue
        for k, v in rec.items():
            if k in ("step", "time"):
                continue
            x = _float(v)
            if x is not None:
                data[k][int(step)] = x  # a resumed run may rewrite a step: the last value wins
    for k, by_step in data.items():
        steps = sorted(by_step)
        run.series[k] = (steps, [by_step[s] for s in steps])
    return run


def family_of(metric: str) -> str | None:
    for fam, globs in FAMILIES.items():
        if any(fnmatch.fnmatchcase(metric, g) for g in globs):
            return fam
    return None


def panel_of(metric: str) -> tuple[str, str]:
    """(panel, series label): per-layer, per-param-group and per-source metrics share a panel."""
    if metric in _SHARED_PANELS:
        return _SHARED_PANELS[metric]
    m = _LAYER.match(metric)
    if m:
        return m.group(1), m.group(2)
    m = _SOURCE.match(metric)
    if m:
        return f"val/{m.group(2)} by source", m.group(1)
    for prefix in _GROUP_PANELS:
        if metric.startswith(prefix):
            return prefix.rstrip("/"), metric[len(prefix):]
    return metric, ""


def _selected(runs: list[Run], patterns: list[str] | None) -> list[str]:
    names = sorted({k for r in runs for k in r.series})
    return [n for n in names if patterns is None or any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _plot_family(fam: str, metrics: list[str], runs: list[Run], out: Path) -> Path | None:
    panels: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for m in metrics:
        panel, label = panel_of(m)
        panels[panel].append((label, m))
    if not panels:
        return None
    n = len(panels)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, (panel, items) in zip(axes.flat, sorted(panels.items())):
        items.sort()
        many = len(items) > 1
        cmap = plt.get_cmap("viridis")
        for ri, run in enumerate(runs):
            for si, (label, metric) in enumerate(items):
                if metric not in run.series:
                    continue
                steps, values = run.series[metric]
                if many:
                    color = cmap(si / max(1, len(items) - 1) * 0.9)
                    style = _STYLES[ri % len(_STYLES)]
                    name = label if ri == 0 and (len(items) <= 12 or si in (0, len(items) - 1)) else None
                else:
                    color, style = f"C{ri}", "-"
                    name = run.name if len(runs) > 1 else None
                ax.plot(steps, values, style, color=color, label=name, lw=1.3, marker="." if len(steps) < 30 else None)
            if fam == "loss" and panel == "train/loss":
                for alarm in run.alarms:
                    ax.axvline(alarm["step"], color="red", alpha=0.3, lw=0.8)
        if many and len(runs) > 1:
            for ri, run in enumerate(runs):
                ax.plot([], [], _STYLES[ri % len(_STYLES)], color="gray", label=run.name)
        vals = np.array([v for run in runs for _, m in items if m in run.series for v in run.series[m][1]])
        vals = vals[np.isfinite(vals)]
        if vals.size and vals.min() > 0 and vals.max() / vals.min() > 100:
            ax.set_yscale("log")
        title = panel.removeprefix("monitor/")
        ax.set_title("rms/residual" if title == "rms" else title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2 if len(items) > 6 else 1)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(fam.replace("_", " "), fontsize=12)
    fig.tight_layout()
    path = out / f"{fam}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_expert_tokens(runs: list[Run], out: Path) -> Path | None:
    """Layer × expert heatmap of tokens per expert / mean in each run's last window."""
    mats = []
    for run in runs:
        cells: dict[tuple[int, int], float] = {}
        for k, (_, values) in run.series.items():
            m = re.fullmatch(r"monitor/expert_tokens/layer_(\d+)/expert_(\d+)", k)
            if m:
                cells[int(m.group(1)), int(m.group(2))] = values[-1]
        if cells:
            layers = sorted({layer for layer, _ in cells})
            experts = max(e for _, e in cells) + 1
            mat = np.array([[cells.get((layer, e), np.nan) for e in range(experts)] for layer in layers])
            mats.append((run, layers, mat / np.nanmean(mat, axis=1, keepdims=True)))
    if not mats:
        return None
    fig, axes = plt.subplots(1, len(mats), figsize=(5 * len(mats), 3.5), squeeze=False)
    for ax, (run, layers, mat) in zip(axes.flat, mats):
        im = ax.imshow(mat, aspect="auto", cmap="magma", vmin=0)
        ax.set_yticks(range(len(layers)), [f"L{layer}" for layer in layers])
        ax.set_xlabel("expert")
        ax.set_title(f"{run.name}: tokens / mean (last window)", fontsize=10)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    path = out / "expert_tokens.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary(runs: list[Run], metrics: list[str]) -> str:
    """Markdown: per indicator panel, the max over steps (and layers / groups) of each run, with where it was."""
    lines = ["# Monitor summary", "", "Max over steps (and over layers / groups, which is named) per run.", "",
             "| indicator | " + " | ".join(r.name for r in runs) + " |", "|---|" + "---|" * len(runs)]
    panels: dict[str, list[str]] = defaultdict(list)
    for m in metrics:
        if family_of(m) is not None:
            panels[panel_of(m)[0]].append(m)
    for fam in FAMILIES:
        for panel in sorted(p for p in panels if family_of(panels[p][0]) == fam):
            cells = []
            for run in runs:
                best: tuple[float, str, int] | None = None
                for m in panels[panel]:
                    if m not in run.series:
                        continue
                    steps, values = run.series[m]
                    arr = np.array(values)
                    if not np.isfinite(arr).any():
                        continue
                    i = int(np.nanargmax(np.where(np.isfinite(arr), arr, -np.inf)))
                    if best is None or arr[i] > best[0]:
                        best = (float(arr[i]), panel_of(m)[1], steps[i])
                if best is None:
                    cells.append("–")
                else:
                    where = f" ({best[1]}, step {best[2]})" if best[1] else f" (step {best[2]})"
                    cells.append(f"{best[0]:.4g}{where}")
            lines.append(f"| `{panel}` | " + " | ".join(cells) + " |")
    lines += ["", "| run | last finite train/loss | last val/loss | alarms |", "|---|---|---|---|"]
    for run in runs:
        final, val = (next((v for v in reversed(run.series.get(k, ([], []))[1]) if math.isfinite(v)), float("nan"))
                      for k in ("train/loss", "val/loss"))
        kinds = defaultdict(int)
        for a in run.alarms:
            kinds[a.get("alarm", "?")] += 1
        text = ", ".join(f"{k} ×{v}" for k, v in sorted(kinds.items())) or "none"
        lines.append(f"| {run.name} | {final:.4f} | {val:.4f} | {text} |")
    return "\n".join(lines) + "\n"


def plot_runs(run_dirs: list[Path], out: Path, patterns: list[str] | None = None) -> list[Path]:
    names = [Path(p).resolve().name for p in run_dirs]
    if len(set(names)) < len(names):
        names = [str(p) for p in run_dirs]
    runs = [load_run(Path(p), n) for p, n in zip(run_dirs, names)]
    metrics = _selected(runs, patterns)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    by_family: dict[str, list[str]] = defaultdict(list)
    for m in metrics:
        fam = family_of(m)
        if fam is not None:
            by_family[fam].append(m)
    for fam in FAMILIES:
        path = _plot_family(fam, by_family.get(fam, []), runs, out)
        if path is not None:
            written.append(path)
    if patterns is None or any(fnmatch.fnmatchcase("monitor/expert_tokens/layer_00/expert_00", p) for p in patterns):
        path = _plot_expert_tokens(runs, out)
        if path is not None:
            written.append(path)
    (out / "summary.md").write_text(summary(runs, metrics))
    written.append(out / "summary.md")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.plot", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (each with metrics.jsonl)")
    parser.add_argument("--metrics", nargs="+", default=None, metavar="GLOB",
                        help="only metrics matching these globs, e.g. 'monitor/z_*' 'train/loss'")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default RUN_DIR/plots of the first run)")
    args = parser.parse_args(argv)

    def command() -> None:
        out = output_dir("--out", args.out or args.runs[0] / "plots")
        for p in plot_runs(args.runs, out, args.metrics):
            print(p)

    return run_cli(command)


if __name__ == "__main__":
    sys.exit(main())
