"""Peak memory at resume: the checkpoint read into memory (before) vs memory-mapped (after, issue 27).

``python benchmarks/checkpoint_memory.py [--quick] [--out FILE]``

One single-file checkpoint (model + MuonH optimizer state after one step, ≥ 500 MB; ``--quick``: a few MB) is
written once; then each way of resuming runs in its own fresh process, which builds the model and optimizer, resets
the kernel's peak-RSS counter (``/proc/self/clear_refs`` = 5), resumes, and reads ``/proc/self/status``:

- ``read_bytes + BytesIO``: what issue 27 found (``torch.load(io.BytesIO(file.read_bytes()), weights_only=False)``);
- ``torch.load(path)``: the loader before this change (``weights_only=False``, no mmap);
- ``Checkpointer.resume``: the loader now (streamed SHA-256, ``weights_only=True``, ``mmap=True``).

VmHWM is the peak resident set since the reset, anonymous and file-backed pages together. A memory-mapped load's
pages are file-backed: clean page cache the kernel can drop under pressure, so RssAnon (process memory that cannot
be dropped) is reported separately. The first optimizer step after resume (random gradients) is measured too: it
writes the optimizer state, which moves mapped pages into process memory (copy-on-write).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from _common import RESULTS, ROOT, command, loadavg, machine, table, write  # noqa: I001 - puts the repo on sys.path

from hyperp import build_optimizer  # noqa: E402
from hyperp.optim.config import OptimConfig  # noqa: E402
from models.config import ModelConfig  # noqa: E402
from models.qwen3 import build_model  # noqa: E402
from train import checkpoint  # noqa: E402

SHAPES = {  # 75M parameters: a 0.30 GB model, 0.66 GB checkpoint with MuonH state
    "full": ModelConfig(vocab_size=16384, hidden=768, n_layers=8, n_heads=6, n_kv_heads=2, mlp_hidden=2048,
                        max_seq_len=64),
    "quick": ModelConfig(vocab_size=512, hidden=64, n_layers=2, n_heads=2, n_kv_heads=1, mlp_hidden=128,
                         max_seq_len=16),
}
VARIANTS = {"bytesio": "read_bytes + BytesIO (issue 27)", "path": "torch.load(path) (before)",
            "mmap": "Checkpointer.resume: mmap, weights_only (now)"}
_MB = 1 << 20


def _parts(shape: str) -> tuple[ModelConfig, torch.nn.Module, torch.optim.Optimizer]:
    cfg = SHAPES[shape]
    model = build_model(cfg)
    return cfg, model, build_optimizer(model, OptimConfig(name="muonh"))


def _checkpointer(run: Path, cfg: ModelConfig, model: torch.nn.Module, optimizer) -> checkpoint.Checkpointer:
    states = {"model": model, "optimizer": optimizer, "rng": checkpoint.RNGState()}
    return checkpoint.Checkpointer(run, states, {"model": dataclasses.asdict(cfg)}, keep=1)


def _step(model: torch.nn.Module, optimizer) -> None:
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def write_checkpoint(run: Path, shape: str) -> Path:
    cfg, model, optimizer = _parts(shape)
    _step(model, optimizer)  # optimizer state exists
    return _checkpointer(run, cfg, model, optimizer).save(1)


def _status() -> dict[str, float]:
    """VmHWM, VmRSS, RssAnon, RssFile of this process in MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux ≥ 4.0)


def child(variant: str, run: Path, shape: str) -> dict[str, float]:
    """Resume ``run`` the ``variant`` way in this (fresh) process; memory figures in MB."""
    cfg, model, optimizer = _parts(shape)
    _reset_peak()
    base = _status()
    if variant == "mmap":
        _checkpointer(run, cfg, model, optimizer).resume()
    else:
        file = checkpoint.list_checkpoints(run)[-1] / checkpoint.STATE_FILE
        source = io.BytesIO(file.read_bytes()) if variant == "bytesio" else file
        state = torch.load(source, map_location="cpu", weights_only=False)
        del source
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        del state
    resumed = _status()
    _step(model, optimizer)
    stepped = _status()
    return {"base": base["VmRSS"], "peak": resumed["VmHWM"], "anon": resumed["RssAnon"], "file": resumed["RssFile"],
            "step_peak": stepped["VmHWM"], "step_anon": stepped["RssAnon"], "step_file": stepped["RssFile"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few-MB checkpoint (checks the script runs)")
    parser.add_argument("--out", default=str(RESULTS / "checkpoint_memory.md"))
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shape = "quick" if args.quick else "full"
    if args.child:
        print(json.dumps(child(args.child, Path(args.run), shape)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_checkpoint(Path(tmp), shape)
        size = (ckpt / checkpoint.STATE_FILE).stat().st_size / _MB
        load_before = loadavg()
        results = {v: _run_child(v, Path(tmp), args.quick) for v in VARIANTS}
    params = sum(p.numel() for p in build_model(SHAPES[shape]).parameters())
    write(Path(args.out), _report(results, size, params, shape, load_before, args.quick))
    return 0


def _run_child(variant: str, run: Path, quick: bool) -> dict[str, float]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--run", str(run)]
    done = subprocess.run([*argv, *(["--quick"] if quick else [])], capture_output=True, text=True, check=True,
                          cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _report(results: dict[str, dict[str, float]], size: float, params: int, shape: str, load_before: str,
            quick: bool) -> list[str]:
    cfg = SHAPES[shape]
    rows = [[VARIANTS[v], f"{r['base']:.0f}", f"{r['peak']:.0f}", f"{(r['peak'] - r['base']) / size:.2f}",
             f"{r['anon']:.0f}", f"{r['file']:.0f}", f"{r['step_peak']:.0f}", f"{r['step_anon']:.0f}",
             f"{r['step_file']:.0f}"]
            for v, r in results.items()]
    return [
        "# Peak memory at resume (single-file checkpoint)", "",
        f"- command: `{command('checkpoint_memory.py', ['--quick'] if quick else [])}` (each way of resuming in its "
        "own process)",
        f"- machine: {machine()}; load average {load_before} (before) / {loadavg()} (after)",
        f"- model: {params / 1e6:.1f}M parameters (hidden {cfg.hidden}, {cfg.n_layers} layers, vocab "
        f"{cfg.vocab_size}), fp32, MuonH state after one step: `state.pt` = {size:.0f} MB",
        "- MB from /proc/self/status; the peak counter (VmHWM) is reset after the model and optimizer are built, so "
        "*peak* covers the resume alone; *extra* = (peak − before) / checkpoint size; *peak through step 1* adds the "
        "first optimizer step (random gradients: + one model size)", "",
        *table(["resume", "before", "peak", "extra / checkpoint", "RssAnon after", "RssFile after",
                "peak through step 1", "RssAnon after step 1", "RssFile after step 1"], rows),
    ]


if __name__ == "__main__":
    sys.exit(main())
