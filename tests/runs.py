"""Shared test helpers: the CLI argv of a tiny run, metrics readers, one-line error checks."""

from __future__ import annotations

import json
from pathlib import Path

CONFIG = "configs/tiny-dense.toml"


def argv(sets: list[str], out: Path, *extra: str) -> list[str]:
    args = ["--config", CONFIG, "--out", str(out), *extra]
    for s in sets:
        args += ["--set", s]
    return args


def records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def series(run_dir: Path, key: str) -> dict[int, float]:
    """``{step: value}`` of one metric; fails on a duplicated step (a resume must not log a step twice)."""
    out: dict[int, float] = {}
    for r in records(run_dir):
        if key in r:
            assert r["step"] not in out, f"step {r['step']} logged twice for {key}"
            out[r["step"]] = r[key]
    return out


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc != 0, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)
