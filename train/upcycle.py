"""``python -m train.upcycle DENSE_RUN --config MOE.toml [--set key=value ...] --out RUN_DIR``: start an MoE run from
a dense run's newest checkpoint.

Writes RUN_DIR with a step-0 checkpoint of the MoE model of MOE.toml (:func:`models.upcycle.upcycle`: experts are
slices or copies of the dense MLPs, the router picks whole groups that rebuild them, so the model computes what the
dense one did) with a fresh optimizer and schedule; the MoE run then continues from it with
``python -m train --config MOE.toml [--set ...] --out RUN_DIR --resume``. MuonH/AdamH take each matrix's radius from
these weights at the first step (see :mod:`models.upcycle` for what the expert radii are).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hyperp.errors import ConfigError, HyperpError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.upcycle", description=__doc__.splitlines()[0])
    parser.add_argument("dense_run", type=Path, help="run directory of a dense model (its newest valid checkpoint)")
    parser.add_argument("--config", required=True, help="TOML preset of the MoE run, e.g. configs/tiny-moe.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value of the MoE run (repeatable; pass the same ones to --resume)")
    parser.add_argument("--out", required=True, type=Path, help="run directory of the MoE run (must be new)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> Path:
    from models.upcycle import upcycle
    from train.build import build_components
    from train.callbacks import build_callbacks
    from train.checkpoint import list_checkpoints, load_model_from_run
    from train.config import load_config
    from train.loop import Trainer

    cfg = load_config(args.config, args.overrides)
    if list_checkpoints(args.out):
        raise ConfigError(f"--out {args.out} already has checkpoints: choose a new run directory")
    if not list_checkpoints(args.dense_run):
        raise ConfigError(f"{args.dense_run} has no checkpoint to upcycle")
    dense, dense_tokenizer = load_model_from_run(args.dense_run)
    moe = upcycle(dense, cfg.model, seed=cfg.train.seed)  # checks the configs before anything is built
    parts = build_components(cfg)
    _check_same_tokenizer(dense_tokenizer, parts.data.tokenizer, args.dense_run)
    parts.model.load_state_dict(moe.state_dict())  # onto the run's device and dtype
    args.out.mkdir(parents=True, exist_ok=True)
    path = Trainer(cfg, args.out, parts, build_callbacks(cfg, parts.dist)).save_checkpoint()
    sets = "".join(f" --set {s}" for s in args.overrides)
    print(f"upcycled {args.dense_run} into {path}; continue with: python -m train --config {args.config}{sets} "
          f"--out {args.out} --resume")
    return path


PROBE = "The quick brown fox, 1234 — naïve café!\n\tdef f(x): return x ** 2"


def _check_same_tokenizer(dense, data, dense_run: Path) -> None:
    """The embedding rows mean the dense run's tokens: the MoE run's data must be tokenized alike (probe text)."""
    if dense is not None and data is not None and dense.encode(PROBE) != data.encode(PROBE):
        raise ConfigError(f"the MoE run's data.tokenizer encodes text differently from {dense_run}'s tokenizer: "
                          "upcycle with the dense run's tokenizer")


def main(argv: list[str] | None = None) -> int:
    try:
        run(parse_args(argv))
    except HyperpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        where = f" {err.filename}" if err.filename else ""
        print(f"error: cannot access{where}: {err.strerror or err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
