"""Grid sweeps: ``python -m train.sweep --config configs/X.toml --grid key=v1,v2 [--zip key=w1,w2] … [--out DIR]``.

Each ``--grid`` adds an axis; ``--zip`` adds keys that vary *together* with the previous axis (same number of
values), e.g. ``--grid optim.name=muonh,adamw --zip model.moe.gate=sqrt,softmax``. The sweep runs the Cartesian
product of the axes, each point as its own ``python -m train`` process in ``OUT/<point>/`` (so a crash or kill of one
run never costs another), sequentially on a CPU, or one run per GPU when several are visible (``--jobs``).

Resumable: a point whose ``result.json`` exists is skipped; a point with checkpoints but no result is resumed. A
point whose run stopped on ``train.max_nonfinite`` non-finite steps in a row has diverged: that is its result
(``diverged = 1``, final val loss NaN), recorded like a finished run rather than retried.
After every point, ``OUT/results.csv`` and ``OUT/results.md`` are rewritten from the recorded runs: final val loss,
expert balance (MaxVio, max/mean, CV, dead experts, averaged over the last quarter of the run), the maxima of the
monitors and the median tokens/s.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyperp.errors import ConfigError, HyperpError

RESULT_FILE = "result.json"
BALANCE_KEYS = ("moe/maxvio", "moe/max_mean", "moe/cv", "moe/dead")


@dataclass(frozen=True)
class Point:
    """One run of the sweep: its overrides, in axis order, and a filesystem-safe name built from them."""

    overrides: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        parts = [f"{key.rsplit('.', 1)[-1]}={_fmt(value)}" for key, value in self.overrides]
        return re.sub(r"[^A-Za-z0-9_.=+-]", "_", "__".join(parts)) or "base"

    def set_args(self) -> list[str]:
        return [f"{key}={_toml(value)}" for key, value in self.overrides]


def _fmt(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def parse_values(text: str) -> list[Any]:
    """``"0,1e-3,sqrt"`` → [0, 0.001, "sqrt"]: each item is a TOML literal, else a plain string."""
    values: list[Any] = []
    for raw in text.split(","):
        raw = raw.strip()
        if not raw:
            raise ConfigError(f"empty value in grid values {text!r}")
        try:
            values.append(tomllib.loads(f"v = {raw}")["v"])
        except tomllib.TOMLDecodeError:
            values.append(raw)
    return values


def parse_axis(spec: str) -> tuple[str, list[Any]]:
    key, sep, values = spec.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--grid {spec!r} must look like section.key=v1,v2,…")
    return key, parse_values(values)


def build_axes(specs: Sequence[tuple[str, str]]) -> list[list[tuple[str, list[Any]]]]:
    """``[("grid", "a=1,2"), ("zip", "b=x,y"), ("grid", "c=3")]`` → axes [[a, b], [c]] (zip joins the previous)."""
    axes: list[list[tuple[str, list[Any]]]] = []
    for kind, spec in specs:
        key, values = parse_axis(spec)
        if kind == "zip":
            if not axes:
                raise ConfigError(f"--zip {spec!r} needs a --grid before it")
            if len(values) != len(axes[-1][0][1]):
                raise ConfigError(f"--zip {key} has {len(values)} values, its --grid {axes[-1][0][0]} has "
                                  f"{len(axes[-1][0][1])}")
            axes[-1].append((key, values))
        else:
            axes.append([(key, values)])
    return axes


def expand(axes: list[list[tuple[str, list[Any]]]]) -> list[Point]:
    """The Cartesian product over axes (zipped keys move together), in a stable order."""
    per_axis = [[tuple((key, values[i]) for key, values in axis) for i in range(len(axis[0][1]))] for axis in axes]
    points = [Point(tuple(item for group in combo for item in group)) for combo in itertools.product(*per_axis)]
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise ConfigError("two grid points get the same run name; use values that differ in their text")
    return points


# ---------------------------------------------------------------------------------------------- results


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def summarize(records: list[dict[str, Any]]) -> dict[str, float]:
    """One row of the results table from a run's metrics records."""
    steps = [r for r in records if "train/loss" in r]
    val = [r["val/loss"] for r in records if "val/loss" in r]
    row: dict[str, float] = {"steps": float(steps[-1]["step"]) if steps else 0.0,
                             "final_val_loss": float(val[-1]) if val else math.nan,
                             "final_train_loss": float(steps[-1]["train/loss"]) if steps else math.nan}
    for key in ("tokens_per_s", "mfu"):
        values = [r[f"train/{key}"] for r in steps if f"train/{key}" in r]
        row[key] = statistics.median(values) if values else math.nan
    tail = steps[len(steps) * 3 // 4:]
    for key in BALANCE_KEYS:
        vals = [r[key] for r in tail if key in r]
        if vals:
            row[key.split("/")[1]] = statistics.fmean(vals)
    monitors = sorted({k for r in records for k in r if k.startswith("monitor/") and k.count("/") == 1})
    for key in monitors:
        vals = [r[key] for r in records if isinstance(r.get(key), (int, float))]
        if vals:
            row[f"max:{key.split('/', 1)[1]}"] = max(vals)
    return row


def collect(out: Path, points: Sequence[Point]) -> list[dict[str, Any]]:
    rows = []
    for point in points:
        result = out / point.name / RESULT_FILE
        if result.exists():
            rows.append({"run": point.name, **dict(point.overrides), **json.loads(result.read_text())})
    return rows


def write_tables(out: Path, rows: list[dict[str, Any]]) -> None:
    from train.checkpoint import write_atomic

    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "results.csv", buffer.getvalue().encode())
    shown = [c for c in columns if not c.startswith("max:")] + [c for c in columns if c.startswith("max:")][:8]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in shown) + " |")
    write_atomic(out / "results.md", ("\n".join(lines) + "\n").encode())


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------------------------------------- running


def diverged(records: list[dict[str, Any]], max_nonfinite: int) -> bool:
    """The run stopped because its last ``max_nonfinite`` steps were all non-finite (``nonfinite_skip`` events)."""
    skips = [r for r in records if r.get("event") == "nonfinite_skip"]
    return bool(skips) and skips[-1].get("nonfinite_streak", 0) >= max_nonfinite


def run_point(config: str, point: Point, out: Path, extra: Sequence[str], env: dict[str, str]) -> int:
    """Train one point as a subprocess (resuming a killed one); write ``result.json`` when it finished or diverged
    (then return 0: a diverged run is a result of the sweep, e.g. the high end of an lr grid)."""
    from train.__main__ import EXIT_STOPPED
    from train.checkpoint import list_checkpoints, write_atomic
    from train.config import load_config

    run_dir = out / point.name
    sets = [*extra, *point.set_args(), f"name={json.dumps(point.name)}"]
    argv = [sys.executable, "-m", "train", "--config", config, "--out", str(run_dir)]
    for s in sets:
        argv += ["--set", s]
    if list_checkpoints(run_dir):
        argv.append("--resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "stdout.log", "a") as log:
        code = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    records = read_metrics(run_dir)
    if code == EXIT_STOPPED and diverged(records, load_config(config, sets).train.max_nonfinite):
        row = {**summarize(records), "final_val_loss": math.nan, "diverged": 1.0}
    elif code == 0:
        row = {**summarize(records), "diverged": 0.0}
    else:
        return code
    write_atomic(run_dir / RESULT_FILE, json.dumps(row, indent=1).encode())
    return 0


def _job_envs(jobs: int) -> list[dict[str, str]]:
    """One environment per concurrent job: a GPU each when GPUs are visible, else an equal share of CPU threads."""
    import torch

    base = dict(os.environ)
    gpus = torch.cuda.device_count()
    if gpus:
        return [{**base, "CUDA_VISIBLE_DEVICES": str(i % gpus)} for i in range(jobs)]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    return [{**base, "OMP_NUM_THREADS": str(threads)} for _ in range(jobs)]


def run_sweep(config: str, points: Sequence[Point], out: Path, extra: Sequence[str], jobs: int) -> list[str]:
    """Run every unfinished point; returns the names of points that failed."""
    from concurrent.futures import ThreadPoolExecutor

    out.mkdir(parents=True, exist_ok=True)
    todo = [p for p in points if not (out / p.name / RESULT_FILE).exists()]
    print(f"sweep {out}: {len(points)} points, {len(points) - len(todo)} already done, {len(todo)} to run")
    envs = _job_envs(jobs)
    failed: list[str] = []
    lock = threading.Lock()

    def work(i: int, point: Point) -> None:
        code = run_point(config, point, out, extra, envs[i % jobs])
        status = "done" if code == 0 else f"FAILED (exit {code}, see {out / point.name / 'stdout.log'})"
        with lock:
            print(f"  {point.name}: {status}", flush=True)
            if code != 0:
                failed.append(point.name)
            write_tables(out, collect(out, points))

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(lambda item: work(*item), enumerate(todo)))
    write_tables(out, collect(out, points))
    return failed


class _AxisAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        getattr(namespace, "axes").append((self.dest, values))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.sweep", description="Run a grid of training runs.")
    parser.add_argument("--config", required=True, help="base TOML preset")
    parser.add_argument("--grid", dest="grid", action=_AxisAction, metavar="KEY=V1,V2", help="an axis (repeatable)")
    parser.add_argument("--zip", dest="zip", action=_AxisAction, metavar="KEY=W1,W2",
                        help="keys varied together with the previous --grid axis")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override applied to every point")
    parser.add_argument("--steps", type=int, default=None, help="train.max_steps for every point")
    parser.add_argument("--out", default=None, help="sweep directory (default sweeps/<config stem>)")
    parser.add_argument("--jobs", type=int, default=None, help="concurrent runs (default: one per GPU, else 1)")
    parser.set_defaults(axes=[])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        import torch

        from train.config import load_config

        if not args.axes:
            raise ConfigError("give at least one --grid key=v1,v2,…")
        points = expand(build_axes(args.axes))
        extra = list(args.overrides) + ([f"train.max_steps={args.steps}"] if args.steps is not None else [])
        for point in points:  # validate every point's config before the first run starts
            load_config(args.config, [*extra, *point.set_args()])
        jobs = args.jobs or max(1, torch.cuda.device_count())
        if jobs < 1:
            raise ConfigError(f"--jobs={jobs} must be >= 1")
        out = Path(args.out) if args.out else Path("sweeps") / Path(args.config).stem
        failed = run_sweep(args.config, points, out, extra, jobs)
    except HyperpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"results: {out / 'results.md'}")
    if failed:
        print(f"error: {len(failed)} point(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
