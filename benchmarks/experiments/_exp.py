"""Shared helpers for the experiment analyses: read a sweep directory's runs, val curves, machine line, plots."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
SWEEPS = ROOT / "sweeps"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_name(name: str) -> dict[str, Any]:
    """``"name=muonh__lr=0.02"`` → {"name": "muonh", "lr": 0.02} (the sweep's run-directory naming)."""
    out: dict[str, Any] = {}
    for part in name.split("__"):
        key, _, value = part.partition("=")
        out[key] = _value(value)
    return out


def load_run(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "metrics.jsonl"
    if not path.exists() or not (run_dir / "result.json").exists():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    val = [(r["step"], r["val/loss"]) for r in records if "val/loss" in r]
    train = [r for r in records if "train/loss" in r]
    times = [r["time"] for r in records if "time" in r]
    tail = train[len(train) * 3 // 4:]

    def tail_mean(key: str) -> float:
        vals = [r[key] for r in tail if isinstance(r.get(key), (int, float))]
        return statistics.fmean(vals) if vals else math.nan

    return {"dir": run_dir, "name": run_dir.name, "params": parse_name(run_dir.name), "records": records,
            "val": val, "final_val": val[-1][1] if val else math.nan,
            "diverged": any(not math.isfinite(r["train/loss"]) for r in train) or not val
            or not math.isfinite(val[-1][1]),
            "maxvio": tail_mean("moe/maxvio"), "max_mean": tail_mean("moe/max_mean"), "cv": tail_mean("moe/cv"),
            "dead": tail_mean("moe/dead"),
            "seconds": (max(times) - min(times)) if times else math.nan,
            "t0": min(times) if times else math.nan, "t1": max(times) if times else math.nan,
            "tokens_per_s": statistics.median([r["train/tokens_per_s"] for r in train if "train/tokens_per_s" in r]
                                              or [math.nan])}


def load_sweep(name: str) -> list[dict[str, Any]]:
    root = SWEEPS / name
    if not root.exists():
        return []
    runs = [load_run(d) for d in sorted(root.iterdir()) if d.is_dir()]
    return [r for r in runs if r is not None]


def sweep_time(runs: list[dict[str, Any]], wall: bool = True) -> str:
    if not runs:
        return "n/a"
    span = max(r["t1"] for r in runs) - min(r["t0"] for r in runs)
    busy = sum(r["seconds"] for r in runs)
    if not wall:
        return f"{len(runs)} runs, sum of per-run training time {busy / 60:.1f} min"
    return f"{len(runs)} runs, wall {span / 60:.1f} min (sum of per-run training time {busy / 60:.1f} min)"


def machine(jobs: int = 2) -> str:
    import torch

    from train.mfu import cpu_model

    cpu = cpu_model()
    runs = "2 runs at a time, 1 thread each" if jobs == 2 else f"{jobs} run at a time, {os.cpu_count() // jobs} threads"
    return (f"{cpu}, {os.cpu_count()} cores (shared with other engineers' jobs part of the time), "
            f"torch {torch.__version__}, Python {platform.python_version()}; {runs} (`--jobs {jobs}`)")


def fmt(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def tokens_to_reach(curve: list[tuple[float, float]], target: float) -> float:
    """First x at which the piecewise-linear curve [(x, loss)] reaches ``target`` (nan if never)."""
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if y0 <= target:
            return x0
        if y1 <= target:
            return x0 + (x1 - x0) * (y0 - target) / (y0 - y1)
    if curve and curve[-1][1] <= target:
        return curve[-1][0]
    return math.nan


def token_speedup(base: list[tuple[float, float]], ours: list[tuple[float, float]]) -> float:
    """How many times fewer tokens ``ours`` needs than ``base`` to reach the same val loss (curves [(tokens, loss)]).

    Where ours reaches base's final loss: base's budget / ours' tokens to get there (> 1 means ours is better).
    Where it does not: base's tokens to reach ours' final loss / ours' budget (< 1). nan if neither reaches the
    other's final loss (a curve that never gets below its own start)."""
    t = tokens_to_reach(ours, base[-1][1])
    if math.isfinite(t) and t > 0:
        return base[-1][0] / t
    return tokens_to_reach(base, ours[-1][1]) / ours[-1][0]
