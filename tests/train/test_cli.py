"""The training CLI end to end on a tiny corpus: errors without tracebacks, and exact resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides
from tests.runs import argv, series
from train.__main__ import main


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_resume_continues_identically(text_corpus: Path, tmp_path: Path, moe: bool) -> None:
    sets = tiny_overrides(text_corpus, tmp_path / "cache", moe=moe)
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(argv(sets, straight)) == 0
    assert main(argv(sets, split, "--stop-after", "3")) == 0
    assert main(argv(sets, split, "--resume")) == 0
    a, b = series(straight, "train/loss"), series(split, "train/loss")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert a == b


def test_existing_run_is_never_overwritten(text_corpus: Path, tmp_path: Path, capsys) -> None:
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 3})
    assert main(argv(sets, tmp_path / "run")) == 0
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert main(argv(sets, tmp_path / "run")) == 2
    assert "already has checkpoints" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before


def test_bad_cli_value_is_one_line_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "train", "--config", "configs/tiny-moe.toml", "--set", "model.moe.top_k=99"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "model.moe.top_k=99" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_config_file(capsys) -> None:
    assert main(["--config", "configs/nope.toml"]) == 2
    assert "configs/nope.toml" in capsys.readouterr().err


def test_step_log_shows_val_only_after_the_first_evaluation(text_corpus: Path, tmp_path: Path, capsys) -> None:
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 4, "train.eval_every": 2,
                                                               "log.progress": "true"})
    assert main(argv(sets, tmp_path / "run")) == 0
    lines = {int(line.split()[1].split("/")[0]): line for line in capsys.readouterr().out.splitlines()
             if line.startswith("step ")}
    assert sorted(lines) == [1, 2, 3, 4]
    assert " val " not in lines[1] and "nan" not in lines[1]
    assert all(" val " in lines[step] for step in (2, 3, 4))
