"""``python -m train.convert --run SRC --out RUN_DIR [--checkpoint STEP] [--hf HF_DIR]``: a distributed
(torch.distributed.checkpoint) checkpoint → the single-file checkpoint of a one-process run (and optionally the
Hugging Face export).

SRC is a run directory (its newest checkpoint, or ``--checkpoint STEP``) or a checkpoint directory
(``runs/NAME/checkpoints/step_000100``). RUN_DIR receives ``checkpoints/step_N/{state.pt, manifest.json}`` plus
the source run's ``config.toml`` and ``tokenizer/``, so ``python -m train --resume`` reads it like any run. No
process group is needed: DCP reshards to one process. (``train.generate`` and ``train.export`` read a distributed
checkpoint directly; converting is for resuming in one process or archiving one file.)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from hyperp import build_optimizer
from models.qwen3 import build_model
from train.build import param_dtype
from train.checkpoint import (MANIFEST, is_sharded_checkpoint, list_checkpoints, load_sharded, read_sharded,
                              save, step_dir)
from train.cli import Parser, add_run_args, run_main
from train.config import RunConfig, build
from train.errors import CheckpointError
from train.export import export_run


def convert(src: str | Path, out: str | Path, hf: str | Path | None = None, step: int | None = None) -> Path:
    """Write the single-file checkpoint into run directory ``out``; returns the checkpoint directory."""
    src, out = Path(src), Path(out)
    found = list_checkpoints(src)
    if step is not None:
        path: Path | None = step_dir(src, step)
    else:
        path = src if (src / MANIFEST).is_file() else (found[-1] if found else None)
    if path is None or not is_sharded_checkpoint(path):
        raise CheckpointError(f"{path or src} is not a distributed checkpoint (nothing to convert: a single-file "
                              "checkpoint is read by train.generate and train.export as it is)")
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


def build_parser() -> Parser:
    parser = Parser("python -m train.convert", "Convert a distributed (DCP) checkpoint into the single-file "
                    "checkpoint of a one-process run, and optionally a transformers export.")
    add_run_args(parser, "convert (or one of its checkpoint directories)")
    parser.add_argument("--out", required=True, metavar="DIR", help="run directory to write the single-file checkpoint into")
    parser.add_argument("--hf", default=None, metavar="DIR", help="also export a Hugging Face model directory here")
    return parser


def main(argv: list[str] | None = None) -> int:
    def command() -> None:
        args = build_parser().parse_args(argv)
        written = convert(args.run, args.out, args.hf, args.checkpoint)
        print(f"wrote {written}" + (f" and HF export {args.hf}" if args.hf else ""))

    return run_main(command)


if __name__ == "__main__":
    sys.exit(main())
