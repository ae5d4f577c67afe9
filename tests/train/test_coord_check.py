"""The coordinate check: slopes on synthetic curves with a known slope, flags, per-expert radius drift on real steps."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import tiny_overrides
from tests.runs import assert_one_line_error
from train import coord_check
from train.config import load_config
from train.coord_check import Trace, depth_summary, flagged, log_slope, slopes


@pytest.mark.parametrize("slope", [0.0, 0.5, -0.5, 1.0])
def test_log_slope_recovers_a_power_law(slope: float) -> None:
    xs = [32, 64, 128, 256]
    assert log_slope(xs, [3.0 * x**slope for x in xs]) == pytest.approx(slope, abs=1e-12)


def test_log_slope_is_least_squares_in_log_space() -> None:
    xs, ys = [1, 2, 4, 8], [1.0, 1.5, 1.9, 3.3]
    reference = np.polyfit(np.log(xs), np.log(ys), 1)[0]  # an independent least-squares fit
    assert log_slope(xs, ys) == pytest.approx(reference, rel=1e-12)
    assert math.isnan(log_slope([1, 2], [1.0, 0.0]))  # a zero (or non-finite) value leaves one point: no slope


def test_flags() -> None:
    assert not flagged(0.2, 0.0, 0.25) and flagged(0.3, 0.0, 0.25) and flagged(-0.3, 0.0, 0.25)
    assert not flagged(-0.6, -0.5, 0.25) and flagged(math.nan, 0.0, 0.25)
    assert not flagged(5.0, None, 0.25)  # no expectation, no verdict


def _trace(width: int, depth: int, growth: float, steps: int = 3) -> Trace:
    """Residual RMS ∝ width^growth at the last step, branch RMS flat; sphere update ratio 0.01·depth^−½."""
    t = Trace(width, depth)
    for i in range(depth):
        t.series[f"rms/layer_{i:02d}"] = [0.1 * s * width**growth for s in range(1, steps + 1)]
        t.series[f"rms/attn/layer_{i:02d}"] = [0.2 + i] * steps
        t.series[f"rms/mlp/layer_{i:02d}"] = [0.3] * steps
    t.series["update_ratio/sphere"] = [0.01 * depth**-0.5] * steps
    t.series["update_ratio/adam"] = [0.5] * steps
    return t


def test_slopes_and_flags_from_synthetic_traces() -> None:
    wide = [_trace(w, 2, growth=0.5) for w in (32, 64, 128)]
    result = {s.quantity: s for s in slopes(wide, "width", 0.25)}
    assert result["rms/layer_00"].slope == pytest.approx(0.5) and result["rms/layer_00"].flag
    assert result["rms/attn/layer_01"].slope == pytest.approx(0.0) and not result["rms/attn/layer_01"].flag
    assert result["update_ratio/sphere"].expected == 0.0 and not result["update_ratio/sphere"].flag
    deep = [_trace(64, d, growth=0.0) for d in (1, 2, 4)]
    summary = depth_summary(deep[2])
    assert summary["attn_mean"] == pytest.approx([1.7] * 3)  # mean of layers 0..3: 0.2, 1.2, 2.2, 3.2
    assert summary["resid_last"] == deep[2].series["rms/layer_03"]
    result = {s.quantity: s for s in slopes(deep, "depth", 0.25)}
    assert result["update_ratio/sphere"].slope == pytest.approx(-0.5) and not result["update_ratio/sphere"].flag
    assert result["resid_last"].expected == 0.0 and not result["resid_last"].flag
    assert result["attn_mean"].expected is None and not result["attn_mean"].flag  # positional: shown, not judged
    assert slopes(deep[:1], "depth", 0.25) == []


@pytest.mark.parametrize("mode, flag_possible", [("per_expert", True), ("joint", False)])
def test_expert_radius_drift_on_real_steps(text_corpus: Path, tmp_path: Path, mode: str, flag_possible: bool) -> None:
    cfg = load_config("configs/tiny-moe.toml", [*tiny_overrides(text_corpus, tmp_path / "cache", moe=True),
                                                "monitor.every=1", "optim.lr=0.2", f'optim.expert_sphere="{mode}"'])
    t = coord_check.trace(cfg, steps=3)
    assert set(t.expert_drift) == {"layer_00", "layer_01"} and t.experts_on_sphere
    assert len(t.series["rms/mlp/layer_01"]) == 3 and len(t.series["update_ratio/sphere"]) == 3
    rows = coord_check.expert_flags([t])
    if mode == "per_expert":  # each expert keeps its own radius: fp32 rounding only
        assert max(t.expert_drift.values()) < 1e-5 and not any(r[3] for r in rows)
    else:  # only the joint norm is kept: with lr 0.2 individual experts' radii move, and that is not flagged
        assert max(t.expert_drift.values()) > 1e-3 and not any(r[3] for r in rows)


@pytest.mark.slow  # ~20 s of CPU: five tiny models, two figures
def test_command_writes_report_and_figure(text_corpus: Path, tmp_path: Path) -> None:
    argv = ["--config", "configs/tiny-dense.toml", "--widths", "16,32", "--depths", "1,2", "--steps", "2",
            "--out", str(tmp_path / "cc"), "--results", str(tmp_path / "r.md")]
    for s in tiny_overrides(text_corpus, tmp_path / "cache", **{"model.head_dim": 8}):
        argv += ["--set", s]
    assert coord_check.main(argv) in (0, 1)
    report = (tmp_path / "cc" / "coord_check.md").read_text()
    assert "| rms/attn/layer_01 | " in report and "| resid_last | " in report and "w=16 | w=32" in report
    assert (tmp_path / "cc" / "coord_check.png").stat().st_size > 0 and (tmp_path / "r.png").exists()


def test_bad_input_is_one_line(capsys) -> None:
    code = coord_check.main(["--config", "configs/experiments/exp-dense.toml", "--widths", "48"])  # 48/64 × 2 heads
    assert_one_line_error(code, capsys.readouterr().err, "model.n_heads")
