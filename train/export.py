"""``python -m train.export --run runs/NAME --out hf/NAME [--checkpoint STEP]``: a run's checkpoint (single-file or
distributed) as a directory that ``transformers`` loads offline (``save_pretrained`` + the run's tokenizer;
:func:`models.hf.export_dir` decides between plain Qwen3 classes and the shipped modeling code)."""

from __future__ import annotations

import sys
from pathlib import Path

from hyperp.errors import ConfigError
from models.hf import export_dir
from train.checkpoint import load_model_from_run
from train.cli import Parser, add_run_args, output_dir, run_cli, utf8_path


def export_run(run_dir: str | Path, out_dir: str | Path, step: int | None = None, without_tokenizer: bool = False) -> Path:
    """Write the export of ``run_dir``'s checkpoint ``step`` (default: the newest valid one) and its tokenizer; a run
    without a saved tokenizer is refused unless ``without_tokenizer`` (the export would not load with AutoTokenizer)."""
    model, tokenizer = load_model_from_run(Path(run_dir), step=step)
    if tokenizer is None and not without_tokenizer:
        raise ConfigError(f"run {run_dir} has no tokenizer/ (trained on pre-tokenized data?), so transformers could "
                          "not load a tokenizer from the export; pass --without-tokenizer to export the model alone")
    out = export_dir(model, out_dir, eos_id=None if tokenizer is None else tokenizer.eos_id)
    if tokenizer is not None:
        tokenizer.save(out)  # tokenizer.json + tokenizer_config.json: AutoTokenizer encodes exactly like us
    return out


def build_parser() -> Parser:
    parser = Parser("python -m train.export", "Write a run's checkpoint as a save_pretrained directory (model, "
                    "config, generation config, tokenizer) that transformers loads offline.")
    add_run_args(parser, "export")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (hf/NAME)")
    parser.add_argument("--without-tokenizer", action="store_true",
                        help="export a run that has no saved tokenizer (pre-tokenized data): the model alone")
    return parser


def main(argv: list[str] | None = None) -> int:
    def command() -> None:
        args = build_parser().parse_args(argv)
        out = export_run(utf8_path("--run", args.run), output_dir("--out", args.out), args.checkpoint,
                         args.without_tokenizer)
        print(f"wrote {out}")

    return run_cli(command)


if __name__ == "__main__":
    sys.exit(main())
