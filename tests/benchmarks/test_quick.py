"""Every benchmark script runs in ``--quick`` mode (tiny shapes), so the scripts cannot rot. No timing assertions.

Scripts run in-process through their ``main(argv)`` (sharing this process's imports keeps the suite short) and
write into a temporary results file; the GPU variants must skip cleanly (exit 0, nothing written) without CUDA.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
CPU_SCRIPTS = ["moe_layer", "optim_step", "train_step", "ep_dispatch"]
GPU_SCRIPTS = ["moe_layer_gpu", "train_step_gpu", "optim_step_gpu", "ep_dispatch_gpu"]


def _main(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name).main


@pytest.mark.parametrize("script", CPU_SCRIPTS)
def test_cpu_benchmark_quick(script, tmp_path):
    out = tmp_path / "result.md"
    assert _main(script)(["--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert "load average" in text and "| ---" in text and "torch " in text


@pytest.mark.parametrize("script", GPU_SCRIPTS)
def test_gpu_benchmark_quick(script, tmp_path, capsys):
    out = tmp_path / "result.md"
    assert _main(script)(["--quick", "--out", str(out)]) == 0
    if torch.cuda.is_available():
        assert "| ---" in out.read_text()
    else:
        assert "skipped" in capsys.readouterr().out and not out.exists()


@pytest.mark.slow  # three fresh processes (one per way of resuming), each importing torch
def test_checkpoint_memory_quick(tmp_path):
    out = tmp_path / "result.md"
    assert _main("checkpoint_memory")(["--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert "load average" in text and "| ---" in text and text.count("| read_bytes") == 1


@pytest.mark.slow  # torch.compile traces and generates code for the forward and backward (about a minute on CPU)
def test_compile_speed_quick(tmp_path):
    out = tmp_path / "result.md"
    assert _main("compile_speed")(["--quick", "--presets", "tiny-dense", "--steps", "2", "--warmup", "1",
                                   "--out", str(out)]) == 0
    text = out.read_text()
    assert "load average" in text and "| ---" in text and text.count("| tiny-dense") == 1
