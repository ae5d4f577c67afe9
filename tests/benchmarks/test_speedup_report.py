"""Issue 17's bookkeeping, on hand-written curves and run folders: the token-equivalent speedup (closed forms of
piecewise-linear curves) and the GPU report built from metrics.jsonl. The GPU arms themselves are not run here;
their configs and token cache are checked by the orchestrator's dry run."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "benchmarks" / "experiments"), str(ROOT / "benchmarks" / "gpu")]
_exp = importlib.import_module("_exp")
gpu_speedup = importlib.import_module("gpu_speedup")

BASE = [(0.0, 10.0), (100.0, 5.0), (200.0, 4.0)]


@pytest.mark.parametrize(
    ("ours", "expected"),
    [
        ([(0.0, 10.0), (50.0, 5.0), (100.0, 4.0), (200.0, 3.0)], 200 / 100),  # reaches 4.0 exactly at a point
        ([(0.0, 10.0), (50.0, 5.0), (100.0, 3.0)], 200 / 75),  # 4.0 halfway between 50 (5.0) and 100 (3.0)
        ([(0.0, 10.0), (100.0, 6.0), (200.0, 5.0)], 100 / 200),  # behind: base reached ours' 5.0 at 100
        ([(0.0, 10.0), (100.0, 7.5), (200.0, 4.5)], 150 / 200),  # base reaches 4.5 halfway from 100 to 200
    ],
)
def test_token_speedup_closed_forms(ours, expected):
    assert _exp.token_speedup(BASE, ours) == pytest.approx(expected, rel=1e-12)


def test_token_speedup_of_a_curve_against_itself_is_one():
    assert _exp.token_speedup(BASE, BASE) == pytest.approx(1.0)


def _run(folder: Path, val: list[tuple[int, float]], tokens_per_step: int, z: float) -> None:
    folder.mkdir(parents=True)
    records = []
    for step, loss in val:
        records.append({"step": step, "train/loss": loss + 0.1, "train/tokens": step * tokens_per_step,
                        "train/tokens_per_s": 1000.0 + step, "monitor/z_logits_max": z + step / 1000,
                        "monitor/attn_logit_max/layer_00": 3.0, "monitor/attn_logit_max/layer_01": 7.0})
        records.append({"step": step, "val/loss": loss})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_report_from_run_folders(tmp_path):
    _run(tmp_path / "muonh" / "run", [(1, 10.0), (50, 5.0), (100, 3.0)], 2, z=20.0)  # reaches 4.0 at step 75
    _run(tmp_path / "muon" / "run", [(1, 10.0), (50, 5.0), (100, 4.0)], 2, z=30.0)
    _run(tmp_path / "adamw" / "run", [(1, 10.0), (50, 6.0), (100, 5.0)], 2, z=40.0)  # ours: 5.0 at step 50
    out = tmp_path / "gpu_speedup.md"
    result = gpu_speedup.main(["report", "--runs", str(tmp_path), "--out", str(out), "--json", str(tmp_path / "r.json")])
    assert result == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["speedup"]["muon"] == pytest.approx(100 / 75)
    assert data["speedup"]["adamw"] == pytest.approx(100 / 50)
    muonh = data["runs"]["muonh"]
    assert (muonh["tokens"], muonh["steps"]) == (200, 100)
    assert muonh["monitor_max"]["monitor/z_logits_max"] == pytest.approx(20.1)
    assert muonh["monitor_max"]["monitor/attn_logit_max"] == 7.0  # the maximum over layers
    text = out.read_text()
    assert "over muon: **1.33×**" in text and "over adamw: **2.00×**" in text
    assert (tmp_path / "gpu_speedup.png").stat().st_size > 0


def test_report_without_arm_a_says_so(tmp_path):
    _run(tmp_path / "muon" / "run", [(1, 10.0), (100, 4.0)], 2, z=1.0)
    out = tmp_path / "r.md"
    assert gpu_speedup.main(["report", "--runs", str(tmp_path), "--out", str(out)]) == 1
    assert "arm (a) or the baselines missing" in out.read_text()
    assert math.isnan(gpu_speedup.summarize(tmp_path / "absent")["final_val"])
