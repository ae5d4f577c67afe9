"""``python -m train --config configs/<preset>.toml [--set key=value ...] [--max-steps N] [--out DIR] [--resume]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hyperp.errors import ConfigError, HyperpError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train", description="Train a Qwen3 dense/MoE model.")
    parser.add_argument("--config", required=True, help="TOML preset, e.g. configs/tiny-moe.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=0.01 (repeatable)")
    parser.add_argument("--max-steps", type=int, default=None, help="shorthand for --set train.max_steps=N")
    parser.add_argument("--out", default=None, help="run directory (default runs/<name>)")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="checkpoint and exit after N optimizer steps in this invocation (schedule unchanged), "
                             "e.g. to fit a cluster time slot; continue later with --resume")
    parser.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --out")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> Path:
    from train.build import build_callbacks, build_components
    from train.checkpoint import list_checkpoints, write_atomic
    from train.config import dump_toml, load_config
    from train.loop import Trainer

    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    cfg = load_config(args.config, overrides)
    run_dir = Path(args.out) if args.out else Path("runs") / cfg.name
    if list_checkpoints(run_dir) and not args.resume:
        raise ConfigError(f"run directory {run_dir} already has checkpoints: pass --resume, or choose another --out")
    if args.resume and not list_checkpoints(run_dir):
        raise ConfigError(f"--resume: no checkpoint in {run_dir}")
    parts = build_components(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.toml", dump_toml(cfg).encode())
    if parts.data.tokenizer is not None:
        parts.data.tokenizer.save(run_dir / "tokenizer")
    trainer = Trainer(cfg, run_dir, parts, build_callbacks(cfg, run_dir))
    if args.resume:
        path = trainer.resume()
        print(f"resumed from {path} (step {trainer.state.step})")
    if args.stop_after is not None and args.stop_after < 1:
        raise ConfigError(f"--stop-after={args.stop_after} must be >= 1")
    state = trainer.fit(None if args.stop_after is None else trainer.state.step + args.stop_after)
    print(f"done: step {state.step}, val loss {trainer.last_val_loss:.4f}, run dir {run_dir}")
    if trainer.stop_reason:
        print(f"stopped early: {trainer.stop_reason}", file=sys.stderr)
        raise SystemExit(3)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    try:
        run(argv)
    except HyperpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
