"""Shared benchmark helpers: machine description, interleaved timing, markdown tables.

Every benchmark times its candidates *side by side in one process*, interleaved (A B C A B C …, order rotated each
round) and reports medians and ratios: absolute times on a shared machine are noise, ratios taken under the same
load are not. The load average is sampled before and after the timed rounds and written into each results file.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from train.mfu import cpu_model  # noqa: E402  (re-exported: the benchmarks' machine lines)


def loadavg() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    text = (f"{cpu_model()}, {os.cpu_count()} logical cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op threads")
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def sync(device: torch.device | str = "cpu") -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """Time each callable ``repeats`` times, round-robin with the order rotated every round; seconds per call."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def datasheet_bf16_peak(device: torch.device | str = "cuda") -> float | None:
    """The device's datasheet dense bf16 FLOP/s (the one table: ``train.mfu.DATASHEET_PEAKS``), or None when the
    name is not in it (or the device is not a GPU)."""
    from train.mfu import datasheet_peak

    if torch.device(device).type != "cuda":
        return None
    return datasheet_peak(torch.cuda.get_device_name(device))


def profile_table(fn: Callable[[], object], device: torch.device | str = "cuda", rows: int = 15) -> str:
    """torch.profiler over one call of ``fn``: the ``rows`` ops with the most self time on ``device``, as text."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    fn()  # warm: the profile shows steady-state kernels, not autotuning or first-call allocation
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
        fn()
        sync(device)
    return prof.key_averages().table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total",
                                     row_limit=rows, max_name_column_width=60)


def first_line(err: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"


def runnable(fns: dict[str, Callable[[], object]], notes: list[str]) -> dict[str, Callable[[], object]]:
    """The candidates whose first call succeeds; each one that raises is left out with a note (the rest still run)."""
    ok = {}
    for name, fn in fns.items():
        try:
            fn()
            ok[name] = fn
        except Exception as err:  # noqa: BLE001 - a benchmark reports a failing candidate, it does not die of it
            notes.append(f"{name}: not timed, its first call raised {first_line(err)}")
    return ok


def ratio(num: float | None, den: float | None) -> str:
    """``num / den`` as "1.23×", or "–" when either is missing (a candidate that was not timed)."""
    return "–" if num is None or den is None else f"{num / den:.2f}×"


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> list[str]:
    align = align or ("l" + "r" * (len(header) - 1))
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def command(script: str, argv: Sequence[str]) -> str:
    return " ".join([".venv/bin/python", f"benchmarks/{script}", *argv])


NOTES_MARKER = "<!-- analysis: kept across re-runs -->"


def write_json(out: str | Path | None, obj: object) -> None:
    """Machine-readable results next to the markdown (the GPU runner bundles them); nothing when ``out`` is None."""
    if out is not None:
        import json

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(obj, indent=1, default=str))


def write(out: Path, lines: Sequence[str]) -> None:
    """Write the generated tables; a hand-written analysis below NOTES_MARKER in an existing file is kept."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    if out.exists() and NOTES_MARKER in (old := out.read_text()):
        text += "\n" + old[old.index(NOTES_MARKER):]
    out.write_text(text)
    print(text)
