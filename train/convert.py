"""``python -m train.convert SRC --out RUN_DIR [--hf HF_DIR]``: a distributed (torch.distributed.checkpoint)
checkpoint → the single-file checkpoint of a one-process run (and optionally the Hugging Face export).

SRC is a checkpoint directory (``runs/NAME/checkpoints/step_000100``) or a run directory (its newest
checkpoint). RUN_DIR receives ``checkpoints/step_N/{state.pt, manifest.json}`` plus the source run's
``config.toml`` and ``tokenizer/``, so ``python -m train --resume``, ``train.generate`` and ``train.export``
read it like any run. No process group is needed: DCP reshards to one process.
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
from train.checkpoint import (MANIFEST, is_sharded_checkpoint, list_checkpoints, load_sharded, read_sharded,
                              save)
from train.config import RunConfig, build
from train.errors import CheckpointError
from train.export import export_run


def convert(src: str | Path, out: str | Path, hf: str | Path | None = None) -> Path:
    """Write the single-file checkpoint into run directory ``out``; returns the checkpoint directory."""
    src, out = Path(src), Path(out)
    found = list_checkpoints(src)
    path = src if (src / MANIFEST).is_file() else (found[-1] if found else None)
    if path is None or not is_sharded_checkpoint(path):
        raise CheckpointError(f"{src} is not a distributed checkpoint (or a run whose newest checkpoint is one)")
    written = save(out, *single_file_state(path), keep=1)
    run_dir = path.parent.parent
    if (run_dir / "config.toml").is_file() and run_dir.resolve() != out.resolve():
        shutil.copyfile(run_dir / "config.toml", out / "config.toml")
    if (run_dir / "tokenizer").is_dir() and run_dir.resolve() != out.resolve():
        shutil.copytree(run_dir / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    if hf is not None:
        export_run(out, hf)
    return written


def single_file_state(path: Path) -> tuple[int, dict[str, Any]]:
    """(step, the state dict a one-process run saves) of sharded checkpoint ``path``."""
    plain = read_sharded(path)
    cfg = build(RunConfig, plain["config"])
    model = build_model(cfg.model).to(dtype=param_dtype(cfg))  # a float64 run converts to float64
    optimizer = build_optimizer(model, cfg.optim)  # the groups' lrs are restored from the checkpoint
    load_sharded(path, model, optimizer)
    return int(plain["trainer"]["step"]), plain | {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.convert", description=__doc__.splitlines()[0])
    parser.add_argument("src", help="distributed checkpoint directory, or a run directory (its newest checkpoint)")
    parser.add_argument("--out", required=True, help="run directory to write the single-file checkpoint into")
    parser.add_argument("--hf", default=None, help="also export a Hugging Face model directory here")
    args = parser.parse_args(argv)
    try:
        written = convert(args.src, args.out, args.hf)
    except HyperpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {written}" + (f" and HF export {args.hf}" if args.hf else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
