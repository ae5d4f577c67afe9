"""The transfer check: optimum location, grid-step distance and PASS/FAIL on hand-written loss tables; the whole
command on synthetic losses (no training); one real --quick run (slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import tiny_overrides
from tests.runs import assert_one_line_error
from train import sweep, transfer_check
from train.checkpoint import write_atomic
from train.transfer_verdict import FAIL, INCONCLUSIVE, PASS, combine, judge, locate, meaningful_difference

# benchmarks/results/lr_transfer.md, AdamW (standard parameterization), final val loss by lr; grid step k is
# 0.012·2^k (0.0015 → -3 … 0.048 → 2). The hand-run check found the optimum 3 steps lower at width 128 than at 32.
ADAMW_WIDTH = {
    32: {-2: 5.789, -1: 5.737, 0: 5.725, 1: 5.662, 2: 5.822},
    64: {-2: 5.475, -1: 5.435, 0: 5.292, 1: 5.474},
    128: {-3: 5.407, -2: 5.300, -1: 5.316, 0: 5.493, 1: 5.898},
}


def _vertex_by_polyfit(points: dict[int, float]) -> float:
    """Independent reference: least-squares quadratic through the three points, vertex −b/2a."""
    a, b, _ = np.polyfit(list(points), list(points.values()), 2)
    return -b / (2 * a)


def test_interior_optimum_is_the_parabola_vertex() -> None:
    curve = {-1: 5.2, 0: 5.0, 1: 5.1, 2: 5.6}
    opt = locate(curve)
    assert opt.best == 0 and opt.loss == 5.0 and opt.at_edge == 0
    assert opt.estimate == pytest.approx(_vertex_by_polyfit({-1: 5.2, 0: 5.0, 1: 5.1}), abs=1e-12)
    assert opt.estimate == pytest.approx(1 / 6) and opt.lo == opt.hi == opt.estimate


def test_edges_diverged_neighbours_and_all_diverged() -> None:
    low = locate({0: 5.0, 1: 5.1, 2: 5.3})  # best at the lowest lr: the optimum may be anywhere below k + ½
    assert (low.lo, low.hi, low.estimate, low.at_edge) == (-math.inf, 0.5, 0.0, -1)
    high = locate({-1: 5.4, 0: 5.2})
    assert (high.lo, high.hi, high.at_edge) == (-0.5, math.inf, 1)
    # a diverged (inf) or NaN neighbour: no parabola, but the vertex is still within half a step of the best point
    for bad in (math.inf, math.nan):
        opt = locate({-1: 5.3, 0: 5.0, 1: bad})
        assert (opt.lo, opt.hi, opt.estimate, opt.at_edge) == (-0.5, 0.5, 0.0, 0)
    assert locate({0: math.inf, 1: math.nan}) is None
    assert locate({}) is None


def test_adamw_table_fails_on_width() -> None:
    opts = {w: locate(c) for w, c in ADAMW_WIDTH.items()}
    # by hand: width 64 vertex 0.5·(5.435 − 5.474)/(5.435 − 2·5.292 + 5.474) = −0.06; width 128: −2 + 0.37 = −1.63
    assert opts[64].estimate == pytest.approx(-0.06, abs=0.005)
    assert opts[128].estimate == pytest.approx(-1.630, abs=0.005)
    noise = 0.05
    wide = judge(opts[128], opts[64], ADAMW_WIDTH[128], tolerance=1.0, noise=noise)
    assert wide.verdict == FAIL and wide.shift == pytest.approx(-1.57, abs=0.01)
    assert wide.regret == pytest.approx(5.493 - 5.300)  # loss at the base's best lr (0.012) − this scale's best
    narrow = judge(opts[32], opts[64], ADAMW_WIDTH[32], tolerance=1.0, noise=noise)
    assert narrow.verdict == PASS and narrow.shift == pytest.approx(0.84, abs=0.01)
    assert combine([narrow.verdict, wide.verdict]) == FAIL
    # the same shift passes a tolerance of two steps
    assert judge(opts[128], opts[64], ADAMW_WIDTH[128], tolerance=2.0, noise=noise).verdict == PASS


def test_regret_within_noise_passes_a_large_shift() -> None:
    base = locate({-1: 5.10, 0: 5.00, 1: 5.10})
    flat = {-3: 5.02, -2: 4.99, -1: 5.00, 0: 5.01, 1: 5.2}  # best two steps lower, but only 0.02 better
    opt = locate(flat)
    assert judge(opt, base, flat, tolerance=1.0, noise=0.05).verdict == PASS
    assert judge(opt, base, flat, tolerance=1.0, noise=0.01).verdict == FAIL
    assert judge(opt, base, flat, tolerance=1.0, noise=math.nan).verdict == FAIL  # no noise estimate: shift only


def test_interval_arithmetic_at_grid_edges() -> None:
    base = locate({-1: 5.1, 0: 5.0, 1: 5.1})  # vertex 0
    edge_far = {-1: 5.0, 0: 5.2, 1: 5.4}  # best at the low edge: vertex ≤ −0.5 → shift ≤ −0.5: may be within 1
    j = judge(locate(edge_far), base, edge_far, tolerance=1.0, noise=0.01)
    assert (j.shift_lo, j.shift_hi, j.verdict) == (-math.inf, -0.5, INCONCLUSIVE)
    edge_farther = {-3: 5.0, -2: 5.2, -1: 5.4, 0: 5.5}  # vertex ≤ −2.5: certainly beyond one step
    assert judge(locate(edge_farther), base, edge_farther, tolerance=1.0, noise=0.01).verdict == FAIL
    assert judge(None, base, {0: math.inf}, 1.0, 0.01).verdict == FAIL  # every run of the scale diverged
    assert judge(base, None, {0: 5.0}, 1.0, 0.01).verdict == INCONCLUSIVE


def test_meaningful_difference_is_two_sigma_of_a_difference() -> None:
    seeds = [5.00, 5.02, 5.04]
    assert meaningful_difference(seeds) == pytest.approx(2 * math.sqrt(2) * 0.02)
    assert math.isnan(meaningful_difference([5.0])) and math.isnan(meaningful_difference([5.0, math.inf]))
    assert combine([]) == INCONCLUSIVE and combine([PASS, INCONCLUSIVE]) == INCONCLUSIVE


# ---------------------------------------------------------------------------------------------- the command


def _fake_runs(monkeypatch: pytest.MonkeyPatch, optimum: dict[int, float], ran: list[str]) -> None:
    """Replace training by a parabola in log₂ lr whose optimum (log₂ lr) depends on the width; seed 1 adds 0.01."""

    def fake(config, point, out, extra, env) -> int:
        o = dict(point.overrides)
        width = o.get("model.hidden", 64)
        loss = 4.0 + 0.1 * (math.log2(o["optim.lr"]) - optimum[width]) ** 2 + 0.01 * o.get("train.seed", 0)
        run = out / point.name
        run.mkdir(parents=True, exist_ok=True)
        write_atomic(run / sweep.RESULT_FILE, json.dumps({"final_val_loss": loss, "diverged": 0.0}).encode())
        ran.append(point.name)
        return 0

    monkeypatch.setattr(sweep, "run_point", fake)


ARGS = ["--config", "configs/experiments/exp-dense.toml", "--axes", "width", "--set", "optim.lr=0.08"]


@pytest.mark.parametrize("shift, code", [(-0.4, 0), (-1.8, 1)])
def test_command_extends_the_grid_and_judges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shift: float,
                                              code: int) -> None:
    base = math.log2(0.08)
    ran: list[str] = []
    _fake_runs(monkeypatch, {32: base, 64: base, 128: base + shift}, ran)
    out = tmp_path / "check"
    assert transfer_check.main([*ARGS, "--out", str(out), "--results", str(tmp_path / "r.md")]) == code
    # 3 scales × 3 lrs, 2 more seeds at the base's best lr, and (shift −1.8) two lrs below the grid for width 128
    names = set(ran)
    assert {"lr=0.08__seed=1", "lr=0.08__seed=2"} <= names
    wide = [n for n in names if n.startswith("hidden=128")]
    assert len(wide) == (3 if shift > -1 else 5)  # two steps beyond the low edge: 0.02, then 0.01
    report = (out / "transfer_check.md").read_text()
    assert f"| width | **{'PASS' if code == 0 else 'FAIL'}** |" in report
    assert (out / "transfer_check.png").stat().st_size > 0 and (tmp_path / "r.png").exists()
    # by construction the vertex is exact: the shift column shows it to two decimals
    assert f"{shift:+.2f}" in report
    # a second invocation trains nothing and reaches the same verdict
    ran.clear()
    assert transfer_check.main([*ARGS, "--out", str(out)]) == code and ran == []


def test_prediction_is_the_smallest_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Optima drifting by −0.6 steps per doubling: each scale is within one step of the config (width 64), but width
    128 is 1.2 steps from width 32, where one would tune — FAIL."""
    base = math.log2(0.08)
    _fake_runs(monkeypatch, {32: base + 0.6, 64: base, 128: base - 0.6}, [])
    assert transfer_check.main([*ARGS, "--out", str(tmp_path / "c")]) == 1
    rows = [line for line in (tmp_path / "c" / "transfer_check.md").read_text().splitlines()
            if line.startswith(("| width 32", "| width 64", "| width 128"))]
    assert "prediction (smallest scale)" in rows[0] and "-0.60" in rows[1] and "-1.20" in rows[2] and "FAIL" in rows[2]


def test_member_shapes_and_factors() -> None:
    base = transfer_check.load_config("configs/experiments/exp-moe.toml")
    width = transfer_check.axis_members("configs/experiments/exp-moe.toml", [], base, "width", (-1, 1))
    assert [dict(m.overrides)["model.hidden"] for m in width] == [32, 128]
    assert dict(width[1].overrides) == {"model.hidden": 128, "model.n_heads": 4, "model.n_kv_heads": 2,
                                        "model.mlp_hidden": 512, "model.moe.expert_hidden": 256}
    gran = transfer_check.axis_members("configs/experiments/exp-moe.toml", [], base, "granularity", (-1, 1))
    for m, (k, e, i) in zip(gran, [(1, 4, 256), (4, 16, 64)], strict=True):  # k·I and E·I fixed
        o = dict(m.overrides)
        assert (o["model.moe.top_k"], o["model.moe.num_experts"], o["model.moe.expert_hidden"]) == (k, e, i)
        assert m.factor == 1.0
    # depth ½ of 2 layers is 1; below one layer is impossible, so 1 layer's axis takes ×2 and ×4 instead
    one = transfer_check.load_config("configs/experiments/exp-dense.toml", ["model.n_layers=1"])
    depth = transfer_check.axis_members("configs/experiments/exp-dense.toml", ["model.n_layers=1"], one, "depth", (-1, 1))
    assert [m.value for m in depth] == [2, 4]
    sets = ["hyperp.base_depth=1", "hyperp.base_tokens=204800.0", "hyperp.base_batch_tokens=1024.0"]
    depth = transfer_check.axis_members("configs/experiments/exp-dense.toml", ["model.n_layers=1", *sets], one,
                                        "depth", (1, 2))
    assert [m.factor for m in depth] == pytest.approx([math.sqrt(1 / 2), math.sqrt(1 / 4)])  # √(L₀/L)
    tokens = transfer_check.axis_members("configs/experiments/exp-dense.toml", ["model.n_layers=1", *sets], one,
                                         "tokens", (-1, 1))
    assert [m.factor for m in tokens] == pytest.approx([0.5**-0.32, 2**-0.32])  # (T/T₀)^−0.32


@pytest.mark.parametrize("extra, needle", [
    (["--axes", "granularity"], "granularity axis needs an MoE config"),
    (["--axes", "widht"], "--axes widht"),
    (["--grid-points", "1"], "--grid-points"),
    (["--set", "model.n_kv_heads=3"], "model.n_kv_heads"),
])
def test_bad_input_is_one_line(extra: list[str], needle: str, tmp_path: Path, capsys,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep, "run_point", lambda *a: pytest.fail("bad input must be refused before any run"))
    code = transfer_check.main(["--config", "configs/experiments/exp-dense.toml", "--out", str(tmp_path / "x"), *extra])
    assert_one_line_error(code, capsys.readouterr().err, needle)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_quick_mode_trains_for_real(text_corpus: Path, tmp_path: Path) -> None:
    sets = [s for s in tiny_overrides(text_corpus, tmp_path / "cache") if not s.startswith(("model.", "train.max"))]
    argv = ["--config", "configs/tiny-dense.toml", "--quick", "--out", str(tmp_path / "q"), "--jobs", "2"]
    for s in [*sets, "model.vocab_size=512", "optim.lr=0.08"]:
        argv += ["--set", s]
    assert transfer_check.main(argv) in (0, 1, 3)  # a verdict, whichever it is: no run failed
    rows = (tmp_path / "q" / "transfer_check.md").read_text()
    assert "## width" in rows and "## depth" in rows and (tmp_path / "q" / "transfer_check.png").exists()
    assert len(list((tmp_path / "q").glob("*/result.json"))) == 3 * 3 + 1  # 3 scales × 3 lrs + 1 seed
