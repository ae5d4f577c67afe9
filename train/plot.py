"""``python -m train.plot RUN_OR_SWEEP [...] [--metrics GLOB ...] [--out DIR]``: monitor plots comparing runs.

Reads each run's ``metrics.jsonl`` (a sweep directory stands for every point in it) and writes one PNG per
indicator family (loss, Z-values, RMS, outliers, expert load, router, throughput and MFU, optimizer health,
per-source validation loss and bits per byte, balance and its controller), a layer × expert heatmap of the last
expert-load window, and ``summary.md``: final and minimum loss, and the maximum of each other indicator per run
(SPEC §5: under HyperP these should stay bounded as training goes on). Per-layer metrics (``.../layer_XX``) share a
panel: one line per layer, dark → light with depth; runs differ by line style (or colour, when a panel has one line
per run). Y axes name their unit; the alarm thresholds of each run's ``[monitor]`` config are drawn dashed (growth
alarms relative to the first value from ``monitor.alarm_start``), and alarms that fired as vertical red lines.
``python -m train.sweep`` plots its results table with :func:`plot_sweep`.
"""

from __future__ import annotations

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

from hyperp.errors import ConfigError, HyperpError  # noqa: E402
from train.cli import Parser, output_dir, run_cli  # noqa: E402
from train.errors import DataError  # noqa: E402
from train.monitors.alarms import threshold_rule  # noqa: E402
from train.monitors.config import MonitorConfig  # noqa: E402

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
# panel glob → y-axis label: the unit, and what a reference value means where that helps reading the plot
Y_LABELS: tuple[tuple[str, str], ...] = (
    ("train/loss", "cross-entropy (nats/token)"),
    ("val/loss", "cross-entropy (nats/token)"),
    ("moe/aux_loss", "aux loss E·Σf·P (1 = balanced)"),
    ("moe/z_loss", "router z-loss (nats²)"),
    ("monitor/z_logits_*", "logsumexp of output logits (nats)"),
    ("monitor/z_router*", "LSE² of router logits (nats²)"),
    ("monitor/z_attn", "mean LSE² of attention logits (nats²)"),
    ("monitor/attn_logit_max", "max q·k/√d (logit)"),
    ("monitor/rms*", "RMS (activation units)"),
    ("monitor/outlier_frac/*", "fraction of |x| > 6·RMS"),
    ("monitor/max_over_rms/*", "max |x| / RMS"),
    ("monitor/kurtosis/*", "excess kurtosis (Gaussian: 0)"),
    ("monitor/outlier_pct/*", "% of |x − μ| > 5σ per token"),
    ("monitor/expert_load/maxvio*", "MaxVio (max − mean)/mean"),
    ("monitor/expert_load/max_mean*", "max / mean tokens per expert"),
    ("monitor/expert_load/cv*", "CV of tokens per expert"),
    ("monitor/expert_load/dead*", "experts without tokens"),
    ("train/grad_norm", "gradient L2 norm"),
    ("monitor/grad_norm", "gradient L2 norm per group"),
    ("monitor/weight_norm", "Frobenius norm per group"),
    ("monitor/update_ratio", "‖ΔW‖/‖W‖ per step"),
    ("monitor/sphere_norm_drift", "max |Δ‖W‖| / ‖W₀‖"),
)
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
    monitor: MonitorConfig = field(default_factory=MonitorConfig)  # its alarm thresholds (config.toml [monitor])


def _float(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return None
    try:
        return float(v)
    except ValueError:
        return None


def expand_runs(paths: list[Path]) -> list[Path]:
    """Run directories; a directory without ``metrics.jsonl`` whose subdirectories have one (a sweep) gives those."""
    runs: list[Path] = []
    for path in map(Path, paths):
        points = [] if (path / "metrics.jsonl").is_file() else sorted(
            p for p in path.glob("*") if (p / "metrics.jsonl").is_file())
        if not points and not (path / "metrics.jsonl").is_file():
            raise DataError(f"{path / 'metrics.jsonl'} not found (is {path} a run or sweep directory?)")
        runs += points or [path]
    return runs


def _monitor_config(run_dir: Path) -> MonitorConfig:
    """The run's ``[monitor]`` thresholds from its config.toml (defaults if it has none or cannot be read)."""
    from train.config import build, read_toml

    try:
        return build(MonitorConfig, read_toml(run_dir / "config.toml").get("monitor", {}), "monitor")
    except HyperpError:
        return MonitorConfig()


def load_run(path: Path, name: str | None = None) -> Run:
    file = Path(path) / "metrics.jsonl"
    if not file.is_file():
        raise DataError(f"{file} not found (is {path} a run directory?)")
    run = Run(name or Path(path).resolve().name, Path(path), monitor=_monitor_config(Path(path)))
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


def y_label(panel: str) -> str:
    return next((label for glob, label in Y_LABELS if fnmatch.fnmatchcase(panel, glob)), "")


def _draw_alarms(ax, run: Run, metric: str, steps: list[int], values: list[float], color, drawn: set[str]) -> None:
    """The run's alarm threshold for ``metric`` (dashed) and the steps where an alarm on it fired (red)."""
    for alarm in run.alarms:
        if alarm.get("metric") == metric:
            ax.axvline(alarm["step"], color="red", alpha=0.3, lw=0.8)
    rule = threshold_rule(run.monitor, metric)
    if rule is None:
        return
    kind, value = rule
    if kind in ("above", "below"):
        label = None if kind in drawn else f"alarm {'>' if kind == 'above' else '<'} {value:g}"
        ax.axhline(value, color="red", ls="--", lw=0.9, label=label)
        drawn.add(kind)
        return
    start = next((i for i, s in enumerate(steps) if s >= run.monitor.alarm_start and math.isfinite(values[i])), None)
    if start is not None and values[start] > 0:  # growth: the limit is relative to the first monitored value
        label = None if "growth" in drawn else f"alarm > {value:g}× value at step ≥ {run.monitor.alarm_start}"
        ax.hlines(value * values[start], steps[start], steps[-1], colors=[color], linestyles="--", lw=0.8,
                  alpha=0.6, label=label)
        drawn.add("growth")


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
        drawn: set[str] = set()
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
                _draw_alarms(ax, run, metric, steps, values, color, drawn)
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
        ax.set_ylabel(y_label(panel), fontsize=8)
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


def _max_cell(run: Run, metrics: list[str]) -> str:
    """The max over steps (and over the panel's layers / groups, which is named) of one run."""
    best: tuple[float, str, int] | None = None
    for m in metrics:
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
        return "–"
    return f"{best[0]:.4g}" + (f" ({best[1]}, step {best[2]})" if best[1] else f" (step {best[2]})")


def _final_min_cell(run: Run, metric: str) -> str:
    """A loss: its last finite value and its minimum (with the step)."""
    steps, values = run.series.get(metric, ([], []))
    finite = [(v, s) for s, v in zip(steps, values) if math.isfinite(v)]
    if not finite:
        return "–"
    low, at = min(finite)
    return f"{finite[-1][0]:.4f} (min {low:.4f}, step {at})"


def summary(runs: list[Run], metrics: list[str]) -> str:
    """Markdown: the final and minimum of each loss, the max over steps (and layers / groups) of every other
    indicator panel, per run; then each run's final losses and alarms."""
    lines = ["# Monitor summary", "",
             "Losses: final value (minimum, step). Other indicators: max over steps (and over layers / groups, which "
             "is named).", "",
             "| indicator | " + " | ".join(r.name for r in runs) + " |", "|---|" + "---|" * len(runs)]
    panels: dict[str, list[str]] = defaultdict(list)
    for m in metrics:
        if family_of(m) is not None:
            panels[panel_of(m)[0]].append(m)
    for fam in FAMILIES:
        for panel in sorted(p for p in panels if family_of(panels[p][0]) == fam):
            loss = fam == "loss" and panel.endswith("loss")
            cells = [_final_min_cell(run, panel) if loss else _max_cell(run, panels[panel]) for run in runs]
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
    run_dirs = expand_runs(run_dirs)
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


def plot_sweep(rows: list[dict], keys: list[str], path: Path) -> Path:
    """Final val loss (train loss where no evaluation ran) of a sweep's points against its first key, one line per
    combination of the other keys; a numeric axis spanning ≥ 100× is drawn in log scale."""
    x_key, others = keys[0], keys[1:]
    metric = "final_val_loss" if any(math.isfinite(r.get("final_val_loss", math.nan)) for r in rows) else "final_train_loss"
    numeric = all(isinstance(r.get(x_key), (int, float)) and not isinstance(r.get(x_key), bool) for r in rows)
    labels = list(dict.fromkeys(str(r.get(x_key)) for r in rows))
    lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        x = float(r[x_key]) if numeric else float(labels.index(str(r.get(x_key))))
        lines[", ".join(f"{k.rsplit('.', 1)[-1]}={r.get(k)}" for k in others)].append((x, float(r.get(metric, math.nan))))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (label, pts) in enumerate(sorted(lines.items())):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", color=f"C{i % 10}", label=label or None, lw=1.3)
    xs = [float(r[x_key]) for r in rows] if numeric else []
    if numeric and min(xs) > 0 and max(xs) / min(xs) >= 100:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel(x_key)
    ax.set_ylabel(f"{metric.replace('_', ' ')} (nats/token)")
    ax.set_title(f"{path.parent.name}: {len(rows)} points", fontsize=10)
    ax.grid(alpha=0.3)
    if others:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_parser() -> Parser:
    parser = Parser("python -m train.plot", "Monitor plots (one PNG per indicator family) and summary.md comparing "
                    "runs; a sweep directory stands for all its points.")
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_OR_SWEEP",
                        help="run directories (each with metrics.jsonl) or sweep directories")
    parser.add_argument("--metrics", nargs="+", default=None, metavar="GLOB",
                        help="only metrics matching these globs, e.g. 'monitor/z_*' 'train/loss'")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="output directory (default: plots/ in the first run or sweep directory)")
    return parser


def main(argv: list[str] | None = None) -> int:
    def command() -> None:
        args = build_parser().parse_args(argv)
        for p in plot_runs(args.runs, output_dir("--out", args.out or args.runs[0] / "plots"), args.metrics):
            print(p)

    return run_cli(command)


if __name__ == "__main__":
    sys.exit(main())
