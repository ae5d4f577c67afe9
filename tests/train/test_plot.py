"""``python -m train.plot``: PNGs and summary.md for recorded runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

from train.plot import load_run, main, panel_of


def _write_run(run_dir: Path, scale: float) -> None:
    run_dir.mkdir(parents=True)
    lines = []
    for step in range(1, 9):
        rec = {"step": step, "time": 0.0, "train/loss": 5.0 / step * scale, "train/grad_norm": 1.0,
               "monitor/rms/final": 1.0 + 0.01 * step, "monitor/z_logits_mean": 9.0 - 0.1 * step,
               "monitor/sphere_norm_drift": 1e-7, "monitor/grad_norm/sphere": 0.1, "monitor/grad_norm/adam": 0.5}
        for layer in range(3):
            tag = f"layer_{layer:02d}"
            rec[f"monitor/rms/{tag}"] = 0.1 * (layer + 1) * scale + 0.001 * step
            rec[f"monitor/z_attn/{tag}"] = 20.0 + layer + step * scale
            rec[f"monitor/outlier_frac/resid/{tag}"] = 0.0
            rec[f"monitor/expert_load/maxvio/{tag}"] = 0.2 * scale
            for e in range(4):
                rec[f"monitor/expert_tokens/{tag}/expert_{e:02d}"] = 10.0 + e
        lines.append(json.dumps(rec))
        if step % 4 == 0:
            lines.append(json.dumps({"step": step, "time": 0.0, "val/loss": 4.0 / step, "train/loss": "nan",
                                     "val/bpb": 1.5 / step, "val/default/wiki/loss": 4.2 / step,
                                     "val/default/wiki/bpb": 1.6 / step, "val/default/pydoc/bpb": 1.2 / step}))
    lines.append(json.dumps({"step": 6, "event": "alarm", "alarm": "loss_spike", "metric": "train/loss",
                             "value": 9.0, "threshold": 3.0}))
    lines.append('{"step": 9, "train/lo')  # a line cut by a kill
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_plot_writes_pngs_and_summary_for_two_runs(tmp_path: Path) -> None:
    _write_run(tmp_path / "a", 1.0)
    _write_run(tmp_path / "b", 2.0)
    out = tmp_path / "plots"
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    for fam in ("loss", "z_values", "rms", "outliers", "expert_load", "optimizer", "eval", "expert_tokens"):
        png = out / f"{fam}.png"
        assert png.is_file() and png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG", fam
    text = (out / "summary.md").read_text()
    assert "| `monitor/z_attn` | 30 (layer_02, step 8) | 38 (layer_02, step 8) |" in text
    assert "| a | 0.7143 | 0.5000 | loss_spike ×1 |" in text
    assert "loss_spike ×1" in text
    assert "| `val/bpb by source` | 0.4 (default/wiki, step 4) | 0.4 (default/wiki, step 4) |" in text


def test_metrics_glob_limits_the_figures(tmp_path: Path) -> None:
    _write_run(tmp_path / "a", 1.0)
    out = tmp_path / "plots"
    assert main([str(tmp_path / "a"), "--metrics", "monitor/rms/*", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["rms.png", "summary.md"]


def test_reader_and_panels(tmp_path: Path) -> None:
    _write_run(tmp_path / "a", 1.0)
    run = load_run(tmp_path / "a")
    steps, values = run.series["train/loss"]
    assert steps == list(range(1, 9)) and math.isnan(values[3]) and values[0] == 5.0  # last write of a step wins
    assert len(run.alarms) == 1
    assert panel_of("monitor/rms/attn/layer_03") == ("monitor/rms/attn", "layer_03")
    assert panel_of("monitor/grad_norm/sphere") == ("monitor/grad_norm", "sphere")
    assert panel_of("monitor/rms/final") == ("monitor/rms/final", "")
    assert panel_of("val/default/wiki/bpb") == ("val/bpb by source", "default/wiki")
    assert panel_of("val/bpb") == ("val/bpb by source", "all") and panel_of("val/loss") == ("val/loss", "")
    assert panel_of("moe/balance/target") == ("moe/maxvio", "target")


def test_missing_run_is_an_error(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "nope")]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
