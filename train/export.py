"""``python -m train.export --run runs/NAME --out hf/NAME``: a run's newest checkpoint as a directory that
``transformers`` loads offline (``save_pretrained`` + the run's tokenizer; :func:`models.hf.export_dir` decides
between plain Qwen3 classes and the shipped modeling code)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hyperp.errors import ConfigError
from models.hf import export_dir
from train.checkpoint import load_model_from_run
from train.cli import output_dir, run_cli, utf8_path


def export_run(run_dir: str | Path, out_dir: str | Path, without_tokenizer: bool = False) -> Path:
    """Write the export of ``run_dir``'s newest valid checkpoint (and its tokenizer) into ``out_dir``; a run without
    a saved tokenizer is refused unless ``without_tokenizer`` (the export would not load with AutoTokenizer)."""
    model, tokenizer = load_model_from_run(Path(run_dir))
    if tokenizer is None and not without_tokenizer:
        raise ConfigError(f"run {run_dir} has no tokenizer/ (trained on pre-tokenized data?), so transformers could "
                          "not load a tokenizer from the export; pass --without-tokenizer to export the model alone")
    out = export_dir(model, out_dir)
    if tokenizer is not None:
        tokenizer.save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.export", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="training run directory (runs/NAME)")
    parser.add_argument("--out", required=True, help="output directory for save_pretrained")
    parser.add_argument("--without-tokenizer", action="store_true",
                        help="export a run that has no saved tokenizer (pre-tokenized data): the model alone")
    args = parser.parse_args(argv)

    def command() -> None:
        out = export_run(utf8_path("--run", args.run), output_dir("--out", args.out), args.without_tokenizer)
        print(f"wrote {out}")

    return run_cli(command)


if __name__ == "__main__":
    sys.exit(main())
