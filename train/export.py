"""``python -m train.export --run runs/NAME --out hf/NAME``: a run's newest checkpoint as a directory that
``transformers`` loads offline (``save_pretrained`` + the run's tokenizer; :func:`models.hf.export_dir` decides
between plain Qwen3 classes and the shipped modeling code)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hyperp.errors import HyperpError
from models.hf import export_dir
from train.checkpoint import load_model_from_run


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the export of ``run_dir``'s newest valid checkpoint (and its tokenizer) into ``out_dir``."""
    model, tokenizer = load_model_from_run(Path(run_dir))
    out = export_dir(model, out_dir)
    if tokenizer is not None:
        tokenizer.save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.export", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="training run directory (runs/NAME)")
    parser.add_argument("--out", required=True, help="output directory for save_pretrained")
    args = parser.parse_args(argv)
    try:
        out = export_run(args.run, args.out)
    except HyperpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
