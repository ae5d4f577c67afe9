"""``python -m train.convert SRC --out RUN_DIR [--hf HF_DIR] [--trust-checkpoint]``: a distributed
(torch.distributed.checkpoint) checkpoint → the single-file checkpoint of a one-process run (and optionally the
Hugging Face export); with ``--trust-checkpoint``, a checkpoint written before checkpoints held only plain data →
one that does.

SRC is a checkpoint directory (``runs/NAME/checkpoints/step_000100``) or a run directory (its newest
checkpoint). RUN_DIR (new, or without checkpoints) receives ``checkpoints/step_N/{state.pt, manifest.json}`` plus
the source run's ``config.toml`` and ``tokenizer/``, so ``python -m train --resume``, ``train.generate`` and
``train.export`` read it like any run. No process group is needed: DCP reshards to one process.

``--trust-checkpoint`` unpickles SRC's state in full — **that runs any code it holds**: only for files from a source
you trust — and turns NumPy values, sets, dataclasses, … into plain data (:mod:`train.serialization`). Without it,
SRC is read like every checkpoint: tensors and plain data only, nothing that can run code.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from hyperp import build_optimizer
from hyperp.errors import HyperpError
from models.qwen3 import build_model
from train.build import param_dtype
from train.checkpoint import (MANIFEST, is_sharded_checkpoint, list_checkpoints, load, load_sharded,
                              read_sharded, save)
from train.config import RunConfig, build
from train.errors import CheckpointError
from train.export import export_run


def convert(src: str | Path, out: str | Path, hf: str | Path | None = None, trust_checkpoint: bool = False) -> Path:
    """Write the single-file checkpoint into run directory ``out``; returns the checkpoint directory.
    ``trust_checkpoint``: SRC may hold objects other than plain data, unpickled in full (runs their code)."""
    src, out = Path(src), Path(out)
    found = list_checkpoints(src)
    path = src if (src / MANIFEST).is_file() else (found[-1] if found else None)
    if path is None or not (trust_checkpoint or is_sharded_checkpoint(path)):
        raise CheckpointError(f"{src} is not a distributed checkpoint (or a run whose newest checkpoint is one); "
                              "a checkpoint from before plain-data checkpoints converts with --trust-checkpoint")
    if list_checkpoints(out):  # saving there would replace or prune them
        raise CheckpointError(f"--out {out} already has checkpoints: choose a new run directory")
    if is_sharded_checkpoint(path):
        step, state = single_file_state(path, trust_checkpoint)
    else:
        state = load(path, trusted=True)
        step = _step(state, path)
    written = save(out, step, state, keep=1)
    run_dir = path.parent.parent
    if (run_dir / "config.toml").is_file() and run_dir.resolve() != out.resolve():
        shutil.copyfile(run_dir / "config.toml", out / "config.toml")
    if (run_dir / "tokenizer").is_dir() and run_dir.resolve() != out.resolve():
        shutil.copytree(run_dir / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    if hf is not None:
        export_run(out, hf)
    return written


def single_file_state(path: Path, trust_checkpoint: bool = False) -> tuple[int, dict[str, Any]]:
    """(step, the state dict a one-process run saves) of sharded checkpoint ``path``."""
    plain = read_sharded(path, trusted=trust_checkpoint)
    cfg = build(RunConfig, plain["config"])
    model = build_model(cfg.model).to(dtype=param_dtype(cfg))  # a float64 run converts to float64
    # The groups' lrs and decays are restored from the checkpoint; depth only satisfies optim.wd_base_depth.
    optimizer = build_optimizer(model, cfg.optim, depth=cfg.model.n_layers)
    load_sharded(path, model, optimizer)
    return _step(plain, path), plain | {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


def _step(state: dict[str, Any], path: Path) -> int:
    try:
        return int(state["trainer"]["step"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"checkpoint {path} has no trainer step (not a training checkpoint)") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.convert", description=__doc__.splitlines()[0])
    parser.add_argument("src", help="distributed checkpoint directory, or a run directory (its newest checkpoint)")
    parser.add_argument("--out", required=True, help="run directory to write the single-file checkpoint into")
    parser.add_argument("--hf", default=None, help="also export a Hugging Face model directory here")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="SRC was written before checkpoints held only plain data: unpickle it in full and rewrite "
                             "it as plain data. This RUNS ANY CODE the file holds: only for files you trust")
    args = parser.parse_args(argv)
    try:
        written = convert(args.src, args.out, args.hf, args.trust_checkpoint)
    except HyperpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {written}" + (f" and HF export {args.hf}" if args.hf else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
