"""``python -m train --config configs/<preset>.toml [--set key=value ...] [--max-steps N] [--out DIR] [--resume]``.

Resuming: ``--resume`` continues from the newest valid checkpoint in ``--out`` (or, after a divergence stopped the
run, from the checkpoint pinned before it), ``--resume-from STEP`` from any kept checkpoint. Without ``--config`` a
resume reads the run's own ``config.toml``; ``--set`` changes what may change (:mod:`train.resume`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from contextlib import nullcontext
from pathlib import Path

from hyperp.errors import ConfigError
from train.cli import EXIT_USAGE, output_dir, run_cli, utf8_path

EXIT_STOPPED = 3  # the run stopped early (non-finite steps, an alarm, SIGTERM) after saving a checkpoint
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), after saving a checkpoint when training had started
# The longest path a run writes below its folder (checkpoints/.trash-rejected-step_NNNNNNN-<pid>-<pid>/manifest.json,
# tokenizer/.tokenizer.tmp/tokenizer_config.json, …) is under 96 bytes; this much is kept free of the OS path limit.
_LONGEST_INSIDE = 96

__all__ = ["EXIT_INTERRUPTED", "EXIT_STOPPED", "EXIT_USAGE", "main", "parse_args", "run"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one ``error: ...`` line (no usage block) via ConfigError."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(f"{message.splitlines()[0]} (see python -m train --help)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="python -m train", description="Train a Qwen3 dense/MoE model.")
    parser.add_argument("--config", default=None,
                        help="TOML preset, e.g. configs/tiny-moe.toml (a resume without it reads RUN/config.toml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=0.01 (repeatable)")
    parser.add_argument("--max-steps", type=int, default=None, help="shorthand for --set train.max_steps=N")
    parser.add_argument("--out", default=None, help="run directory (default runs/<name>)")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="checkpoint and exit after N optimizer steps in this invocation (schedule unchanged), "
                             "e.g. to fit a cluster time slot; continue later with --resume")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest valid checkpoint in --out (after a divergence: from the "
                             "checkpoint pinned before it)")
    parser.add_argument("--resume-from", type=int, default=None, metavar="STEP",
                        help="continue from checkpoint STEP (any kept one: roll back past a spike or divergence)")
    parser.add_argument("--skip-memory-check", action="store_true",
                        help="start even when the memory estimate exceeds what the device has available")
    return parser.parse_args(argv)


def _load(args: argparse.Namespace):  # -> RunConfig
    from train.config import load_config

    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.config is not None:
        return load_config(args.config, overrides)
    if not args.resume or args.out is None:
        raise ConfigError("--config is required (a resume with --out RUN may omit it to reuse RUN/config.toml)")
    saved = utf8_path("--out", args.out) / "config.toml"
    if not saved.is_file():
        raise ConfigError(f"--resume without --config reads {saved}, which does not exist; pass --config")
    return load_config(saved, overrides)


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    """Fail before any work when --out cannot hold this run (checked again under the run's lock)."""
    from train.checkpoint import list_checkpoints

    output_dir("--out", run_dir)
    limit = _path_limit(run_dir)
    if len(os.fsencode(run_dir)) + _LONGEST_INSIDE > limit:
        raise ConfigError(f"--out {str(run_dir)[:60]}… is {len(os.fsencode(run_dir))} bytes long: with the paths a "
                          f"run writes inside it that exceeds this file system's limit of {limit} bytes; choose a "
                          "shorter --out")
    if list_checkpoints(run_dir) and not resume:
        raise ConfigError(f"run directory {run_dir} already has checkpoints: pass --resume, or choose another --out")
    if resume and not list_checkpoints(run_dir):
        raise ConfigError(f"--resume: no checkpoint in {run_dir}")


def _path_limit(path: Path) -> int:
    existing = next((p for p in [path, *path.absolute().parents] if p.is_dir()), Path("/"))
    try:
        return os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 4096  # Linux's PATH_MAX


def run(argv: list[str] | None = None) -> Path:
    from train import distributed
    from train.build import build_components, run_device, uses_bf16
    from train.callbacks import build_callbacks
    from train.lock import RunLock
    from train.loop import Trainer
    from train.memory import check_fits

    args = parse_args(argv)
    args.resume = args.resume or args.resume_from is not None
    if args.stop_after is not None and args.stop_after < 1:
        raise ConfigError(f"--stop-after={args.stop_after} must be >= 1")
    cfg = _load(args)
    run_dir = output_dir("--out", args.out) if args.out else Path("runs") / cfg.name
    _check_run_dir(run_dir, args.resume)
    env = distributed.init(cfg)  # torchrun: process group, rank, world size; plain run: inactive, one rank
    device = run_device(cfg, env)
    if not args.skip_memory_check:  # before anything is allocated: the kernel's OOM killer prints nothing
        check_fits(cfg, device, env.world_size, uses_bf16(cfg, device))
    parts = build_components(cfg, env)
    try:
        with RunLock(run_dir) if env.is_main else nullcontext():  # one writer per run folder, for the whole run
            _check_run_dir(run_dir, args.resume)  # another process may have written here since the first check
            trainer = Trainer(cfg, run_dir, parts, build_callbacks(cfg, env))
            if args.resume:  # before anything in the run dir is written: a mismatching checkpoint changes nothing
                resumed = trainer.resume(args.resume_from)
                if env.is_main:
                    why = f": {resumed.why}" if resumed.why else ""
                    print(f"resumed from {resumed.path} (step {trainer.state.step}){why}")
            if env.is_main:
                _write_run_files(cfg, run_dir, parts.data.tokenizer, args.resume)
            state = _fit(trainer, args.stop_after)
    except KeyboardInterrupt:  # Ctrl-C before training started, or a second one: say truthfully what is saved
        _say_interrupted(run_dir)
        raise _Stopped(EXIT_INTERRUPTED) from None
    distributed.shutdown(env)
    if env.is_main:
        _report(trainer, state, run_dir)
    return run_dir


def _say_interrupted(run_dir: Path) -> None:
    from train.checkpoint import list_checkpoints

    saved = list_checkpoints(run_dir)
    where = f"continue from {saved[-1]} with --resume" if saved else "no checkpoint was saved"
    print(f"interrupted: {where}", file=sys.stderr)


def _write_run_files(cfg, run_dir: Path, tokenizer, resumed: bool) -> None:
    """``config.toml`` (what this invocation really trains with) and, for a new run, ``tokenizer/``; a resume keeps
    the run's tokenizer and checks that the data pipeline still produces the same one."""
    from train.checkpoint import write_atomic
    from train.config import dump_toml
    from train.errors import naming

    directory = run_dir / "tokenizer"
    if tokenizer is not None and resumed and directory.is_dir():
        _check_same_tokenizer(tokenizer, directory)  # before anything is written: a mismatch changes nothing
    with naming(run_dir / "config.toml"):
        write_atomic(run_dir / "config.toml", dump_toml(cfg).encode())
    if tokenizer is not None and not (resumed and directory.is_dir()):
        with naming(directory):
            _save_tokenizer(tokenizer, directory)


def _check_same_tokenizer(tokenizer, saved: Path) -> None:
    """The data pipeline's tokenizer must be the run's (a resume with another cache could retrain a different one)."""
    import filecmp
    import shutil
    import tempfile

    fresh = Path(tempfile.mkdtemp(prefix="tokenizer-check-"))
    try:
        tokenizer.save(fresh)
        names = sorted(p.name for p in fresh.iterdir())
        same = names == sorted(p.name for p in saved.iterdir()) and all(
            filecmp.cmp(fresh / n, saved / n, shallow=False) for n in names)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    if not same:
        raise ConfigError(f"the tokenizer this run's data settings produce differs from the run's saved {saved} "
                          "(the token ids would mean other text); resume with the run's data settings, or start a "
                          "new run with another --out")


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


class _Stopped(Exception):
    """The run stopped early and said why; exit with ``code``."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _fit(trainer, stop_after: int | None):  # -> TrainState
    """Train with SIGTERM and Ctrl-C (SIGINT) finishing the current step and checkpointing; a second Ctrl-C aborts."""
    signals = {signal.SIGTERM: "received SIGTERM", signal.SIGINT: "interrupted (Ctrl-C)"}

    def handler(signum, frame):
        if signum == signal.SIGINT and trainer.stop_reason is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without waiting for the checkpoint
        trainer.request_stop(signals[signum])

    previous = {}
    for signum in signals:
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread (e.g. called from a worker thread in tests)
            pass
    try:
        return trainer.fit(None if stop_after is None else trainer.state.step + stop_after)
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _report(trainer, state, run_dir: Path) -> None:
    """One line: done, or why it stopped, where its checkpoint is and how to go on (raises _Stopped)."""
    from train.checkpoint import list_checkpoints

    if trainer.stop_reason is None:
        val = "" if state.last_val_loss != state.last_val_loss else f", val loss {state.last_val_loss:.4f}"
        print(f"done: step {state.step}{val}, run dir {run_dir}")
        return
    newest = list_checkpoints(run_dir)[-1]  # fit() saved one when it stopped
    rollback = trainer.checkpointer.rollback_to
    if rollback is not None:
        advice = (f"--resume starts from step {rollback} (the checkpoint pinned before the divergence; add "
                  f"--set optim.lr=… or --set data.seed=… to step around it), --resume-from {state.step} continues "
                  "this state")
    else:
        advice = "continue with --resume"
    print(f"stopped early at step {state.step}: {trainer.stop_reason}; checkpoint {newest}; {advice}", file=sys.stderr)
    interrupted = trainer.stop_reason == "interrupted (Ctrl-C)"
    raise _Stopped(EXIT_INTERRUPTED if interrupted else EXIT_STOPPED)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every user-facing failure is one ``error: ...`` line on stderr and a nonzero exit code."""

    def command() -> None:
        run(argv)

    try:
        return run_cli(command)
    except _Stopped as stop:
        return stop.code
    except KeyboardInterrupt:  # while reading the config or preparing data: nothing was written
        print("interrupted: nothing was saved", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
