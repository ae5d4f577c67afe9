"""The transfer CLI on the shipped d8…d24 presets reproduces HyperP's relative lrs (SPEC §3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from train.transfer import main

ROOT = Path(__file__).resolve().parents[2]


def test_cli_prints_spec_table(capsys: pytest.CaptureFixture[str]) -> None:
    targets = [f"configs/d{d}.toml" for d in (12, 16, 20, 24)]
    argv = ["--base", "configs/d8.toml"] + [x for t in targets for x in ("--target", t)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    multipliers = [float(r[4]) for r in rows]
    assert multipliers == pytest.approx([1, 0.59, 0.40, 0.29, 0.23], abs=0.01)
    lrs = [float(r[3]) for r in rows]
    assert lrs[0] == pytest.approx(0.014) and lrs[1] == pytest.approx(0.014 * multipliers[1], rel=1e-3)
    init = [line for line in out.splitlines() if line.startswith("configs/d16.toml: ")]
    assert init == ["configs/d16.toml: matrices U(±1/√fan_in), embedding N(0, 0.0001²), lm_head N(0, 0.02²); "
                    "warmup 0; linear decay to 0.1·peak"]  # read from the target config (HyperP's defaults)


def test_cli_bad_config_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--base", "configs/missing.toml", "--target", "configs/d8.toml"]) == 2
    err = capsys.readouterr().err
    assert "configs/missing.toml" in err and err.count("\n") == 1


def test_old_cli_spellings_point_to_the_new_ones() -> None:
    """hyperp and models import nothing from train, so their former CLIs only say where the tool went."""
    for module, new in (("hyperp.transfer", "python -m train.transfer"), ("models.hf", "python -m train.export")):
        proc = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, timeout=120, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        last = proc.stderr.strip().splitlines()[-1]  # runpy may warn first: hyperp/__init__ imports hyperp.transfer
        assert proc.returncode == 2 and last.startswith("error: ") and new in last, proc.stderr
