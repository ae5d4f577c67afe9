"""The data scale benchmark runs in --quick mode (tiny synthetic dataset, deleted after): the script cannot rot."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_data_scale_quick(tmp_path):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    main = importlib.import_module("data_scale").main
    out = tmp_path / "result.md"
    assert main(["--quick", "--dir", str(tmp_path / "ds"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "load average" in text and "| ---" in text and "mid as 100 shards" in text
    assert not (tmp_path / "ds").exists()  # the synthetic dataset is deleted
