"""wandb is an optional extra: a run without it logs to metrics.jsonl (offline mode: one warning), online mode
without it is a one-line error before training."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.conftest import tiny_overrides
from tests.runs import argv, assert_one_line_error, series
from train.__main__ import main


def test_offline_mode_without_wandb_trains_and_warns(text_corpus: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError; find_spec gives None
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"log.wandb": '"offline"', "train.max_steps": 2})
    assert main(argv(sets, tmp_path / "run")) == 0
    err = capsys.readouterr().err
    assert "warning: wandb is not installed" in err and "Traceback" not in err
    assert sorted(series(tmp_path / "run", "train/loss")) == [1, 2]


def test_online_mode_without_wandb_is_a_one_line_error(text_corpus: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"log.wandb": '"online"'})
    rc = main(argv(sets, tmp_path / "run"))
    assert_one_line_error(rc, capsys.readouterr().err, "log.wandb='online'", "wandb")
    assert not (tmp_path / "run" / "checkpoints").exists()
