"""``python -m train --config configs/<preset>.toml [--set key=value ...] [--max-steps N] [--out DIR] [--resume]``."""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from pathlib import Path

from hyperp.errors import ConfigError, HyperpError


EXIT_USAGE = 2  # a user error: config, CLI, data, checkpoint, file system
EXIT_STOPPED = 3  # the run stopped early (non-finite steps, an alarm, SIGTERM) after saving a checkpoint
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one ``error: ...`` line (no usage block) via ConfigError."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(f"{message.splitlines()[0]} (see python -m train --help)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="python -m train", description="Train a Qwen3 dense/MoE model.")
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
    from train import distributed
    from train.build import build_components
    from train.callbacks import build_callbacks
    from train.checkpoint import list_checkpoints, write_atomic
    from train.config import dump_toml, load_config
    from train.loop import Trainer

    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.stop_after is not None and args.stop_after < 1:
        raise ConfigError(f"--stop-after={args.stop_after} must be >= 1")
    cfg = load_config(args.config, overrides)
    run_dir = Path(args.out) if args.out else Path("runs") / cfg.name
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} exists and is not a directory")
    if list_checkpoints(run_dir) and not args.resume:
        raise ConfigError(f"run directory {run_dir} already has checkpoints: pass --resume, or choose another --out")
    if args.resume and not list_checkpoints(run_dir):
        raise ConfigError(f"--resume: no checkpoint in {run_dir}")
    env = distributed.init(cfg)  # torchrun: process group, rank, world size; plain run: inactive, one rank
    parts = build_components(cfg, env)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, run_dir, parts, build_callbacks(cfg, env))
    if args.resume:  # before anything in the run dir is written: a mismatching checkpoint changes nothing
        path = trainer.resume()
        if env.is_main:
            print(f"resumed from {path} (step {trainer.state.step})")
    if env.is_main:
        write_atomic(run_dir / "config.toml", dump_toml(cfg).encode())
    if parts.data.tokenizer is not None and env.is_main:
        _save_tokenizer(parts.data.tokenizer, run_dir / "tokenizer")
    previous = _stop_on_sigterm(trainer)
    try:
        state = trainer.fit(None if args.stop_after is None else trainer.state.step + args.stop_after)
    finally:
        signal.signal(signal.SIGTERM, previous)
    distributed.shutdown(env)
    if not env.is_main:
        return run_dir
    print(f"done: step {state.step}, val loss {state.last_val_loss:.4f}, run dir {run_dir}")
    if trainer.stop_reason:
        newest = list_checkpoints(run_dir)
        where = f"; checkpoint {newest[-1]}" if newest else ""
        print(f"stopped early: {trainer.stop_reason}{where}; continue with --resume", file=sys.stderr)
        raise _Stopped()
    return run_dir


class _Stopped(Exception):
    """The run stopped early and said why; exit with EXIT_STOPPED."""


def _stop_on_sigterm(trainer):
    """SIGTERM (a scheduler's pre-kill notice) finishes the current step, checkpoints and exits 3."""

    def handler(signum, frame):
        trainer.request_stop("received SIGTERM")

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. called from a worker thread in tests)
        return signal.getsignal(signal.SIGTERM)


def _save_tokenizer(tokenizer, directory: Path) -> None:
    """Write the tokenizer into a temp dir, then swap it in: a kill leaves the old copy or the new one."""
    import shutil

    tmp = directory.with_name(f".{directory.name}.tmp")
    old = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    tokenizer.save(tmp)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def _show_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every user-facing failure is one ``error: ...`` line on stderr and a nonzero exit code."""
    try:
        with warnings.catch_warnings():  # warnings (e.g. a skipped corrupt checkpoint) as one line each
            warnings.simplefilter("default")
            warnings.showwarning = _show_one_line
            run(argv)
    except HyperpError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # unwritable --out, disk full, permissions: the path and the reason, no traceback
        where = f" {err.filename}" if err.filename else ""
        print(f"error: cannot access{where}: {err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print("error: out of memory (reduce train.batch_size or the model size)", file=sys.stderr)
        return EXIT_USAGE
    except _Stopped:
        return EXIT_STOPPED
    except KeyboardInterrupt:
        print("interrupted; continue from the last checkpoint with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
