"""The transfer CLI on the shipped d8…d24 presets reproduces HyperP's relative lrs (SPEC §3)."""

from __future__ import annotations

import pytest

from hyperp.transfer import main


def test_cli_prints_spec_table(capsys: pytest.CaptureFixture[str]) -> None:
    targets = [f"configs/d{d}.toml" for d in (12, 16, 20, 24)]
    argv = ["--base", "configs/d8.toml"] + [x for t in targets for x in ("--target", t)]
    assert main(argv) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    multipliers = [float(r[4]) for r in rows]
    assert multipliers == pytest.approx([1, 0.59, 0.40, 0.29, 0.23], abs=0.01)
    lrs = [float(r[3]) for r in rows]
    assert lrs[0] == pytest.approx(0.014) and lrs[1] == pytest.approx(0.014 * multipliers[1], rel=1e-3)


def test_cli_bad_config_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--base", "configs/missing.toml", "--target", "configs/d8.toml"]) == 2
    err = capsys.readouterr().err
    assert "configs/missing.toml" in err and err.count("\n") == 1
