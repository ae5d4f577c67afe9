"""Sweep bookkeeping: grid parsing, resume skips finished points, tables from recorded runs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from hyperp.errors import ConfigError
from train import sweep
from train.sweep import Point, build_axes, expand, parse_values, summarize


def test_values_are_toml_literals_or_strings() -> None:
    assert parse_values("0,1e-3,0.1") == [0, 1e-3, 0.1]
    assert parse_values("sqrt,softmax") == ["sqrt", "softmax"]
    assert parse_values("true,[1, 2]".replace("[1, 2]", "3")) == [True, 3]
    with pytest.raises(ConfigError):
        parse_values("1,,2")


def test_grid_product_and_zip() -> None:
    axes = build_axes([("grid", "model.moe.aux_weight=0,0.1"), ("grid", "optim.name=muonh,adamw"),
                       ("zip", "model.moe.gate=sqrt,softmax")])
    points = expand(axes)
    assert [p.overrides for p in points] == [
        (("model.moe.aux_weight", 0), ("optim.name", "muonh"), ("model.moe.gate", "sqrt")),
        (("model.moe.aux_weight", 0), ("optim.name", "adamw"), ("model.moe.gate", "softmax")),
        (("model.moe.aux_weight", 0.1), ("optim.name", "muonh"), ("model.moe.gate", "sqrt")),
        (("model.moe.aux_weight", 0.1), ("optim.name", "adamw"), ("model.moe.gate", "softmax")),
    ]
    assert points[2].name == "aux_weight=0.1__name=muonh__gate=sqrt"
    assert points[2].set_args() == ['model.moe.aux_weight=0.1', 'optim.name="muonh"', 'model.moe.gate="sqrt"']


@pytest.mark.parametrize(
    "specs",
    [[("zip", "a.b=1,2")], [("grid", "a.b=1,2"), ("zip", "a.c=1")], [("grid", "novalue")], [("grid", "=1,2")]],
)
def test_bad_grids(specs) -> None:
    with pytest.raises(ConfigError):
        build_axes(specs)


def _write_run(run_dir: Path, losses: list[float], val: float, maxvio: list[float]) -> None:
    run_dir.mkdir(parents=True)
    lines = [json.dumps({"step": i + 1, "train/loss": loss, "train/tokens_per_s": 100.0 + i, "moe/maxvio": mv,
                         "monitor/z_logits_max": 10.0 + i})
             for i, (loss, mv) in enumerate(zip(losses, maxvio))]
    lines.append(json.dumps({"step": len(losses), "val/loss": val}))
    lines.append("{truncated by a kill")
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_summary_from_recorded_metrics(tmp_path: Path) -> None:
    _write_run(tmp_path / "r", [5.0, 4.0, 3.0, 2.5], 2.7, [4.0, 3.0, 2.0, 1.0])
    row = summarize(sweep.read_metrics(tmp_path / "r"))
    assert row["final_val_loss"] == 2.7 and row["final_train_loss"] == 2.5 and row["steps"] == 4
    assert row["maxvio"] == 1.0  # mean over the last quarter (the last record of four)
    assert row["tokens_per_s"] == pytest.approx(101.5)
    assert row["max:z_logits_max"] == 13.0


def test_resume_skips_finished_points_and_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    points = expand(build_axes([("grid", "model.moe.aux_weight=0,0.01,0.1")]))
    out = tmp_path / "sweep"
    ran: list[str] = []

    def fake_run(config, point: Point, out_dir: Path, extra, env) -> int:
        ran.append(point.name)
        run_dir = out_dir / point.name
        _write_run(run_dir, [3.0, 2.0], 2.0 + point.overrides[0][1], [1.0, 0.5])
        (run_dir / sweep.RESULT_FILE).write_text(json.dumps(summarize(sweep.read_metrics(run_dir))))
        return 0

    monkeypatch.setattr(sweep, "run_point", fake_run)
    # the first point finished in an earlier invocation
    fake_run("c", points[0], out, [], {})
    ran.clear()
    assert sweep.run_sweep("configs/tiny-moe.toml", points, out, [], jobs=1) == []
    assert ran == [points[1].name, points[2].name]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [float(r["final_val_loss"]) for r in rows] == [2.0, 2.01, 2.1]
    assert [float(r["model.moe.aux_weight"]) for r in rows] == [0, 0.01, 0.1]
    assert "| run |" in (out / "results.md").read_text()
    ran.clear()
    assert sweep.run_sweep("configs/tiny-moe.toml", points, out, [], jobs=1) == []
    assert ran == []


def test_cli_rejects_bad_points_before_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = sweep.main(["--config", "configs/tiny-moe.toml", "--grid", "model.moe.top_k=2,99", "--out", str(tmp_path)])
    assert code == 2
    assert "model.moe.top_k" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("streak, recorded", [(5, True), (2, False)])
def test_a_diverged_point_is_a_result_not_a_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streak: int,
                                                  recorded: bool) -> None:
    """Exit 3 after train.max_nonfinite (5) non-finite steps in a row: recorded as diverged (NaN loss). Exit 3 for
    another reason (an alarm, SIGTERM): not a result, the point is rerun next time."""
    from train.__main__ import EXIT_STOPPED

    def fake_train(argv, stdout, stderr, env) -> int:
        run_dir = Path(argv[argv.index("--out") + 1])
        lines = [{"step": 10, "val/loss": 4.2}, {"step": 11, "train/loss": 4.1},
                 {"step": 12, "event": "nonfinite_skip", "nonfinite_streak": streak}]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        return EXIT_STOPPED

    monkeypatch.setattr(sweep.subprocess, "call", fake_train)
    point = Point((("optim.lr", 9.0),))
    code = sweep.run_point("configs/tiny-dense.toml", point, tmp_path, [], {})
    result = tmp_path / point.name / sweep.RESULT_FILE
    assert (code == 0) == recorded and result.exists() == recorded
    if recorded:
        row = json.loads(result.read_text())
        assert row["diverged"] == 1.0 and math.isnan(row["final_val_loss"])  # not the last good evaluation's 4.2
