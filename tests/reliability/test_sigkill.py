"""SIGKILL the training process at random moments and inside checkpoint saves; every resume must continue exactly.

All invocations are subprocesses of ``tests.reliability.killable_train`` (``python -m train`` plus a test-only
self-kill hook inside ``train.checkpoint.save``) with one torch thread, so the uninterrupted reference and the
killed-and-resumed run share one float reduction order and must agree bit for bit (CPU, fp32).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides
from tests.runs import argv, records, series
from train.checkpoint import checkpoint_dir, list_checkpoints

ROOT = Path(__file__).resolve().parents[2]
STEPS = 10


def _sets(corpus: Path, cache: Path) -> list[str]:
    return tiny_overrides(corpus, cache, **{"train.max_steps": STEPS, "train.ckpt_every": 1, "train.eval_every": 5,
                                  "train.keep_checkpoints": 2})


def _start(args: list[str], kill: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("RELIABILITY_KILL", None)
    if kill:
        env["RELIABILITY_KILL"] = kill
    return subprocess.Popen([sys.executable, "-m", "tests.reliability.killable_train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _kill_after_steps(proc: subprocess.Popen, run_dir: Path, steps: int, delay: float) -> int:
    """SIGKILL once metrics.jsonl shows ``steps`` more steps than at start, plus ``delay`` seconds (or at exit)."""
    start = max(series(run_dir, "train/loss"), default=0) if (run_dir / "metrics.jsonl").exists() else 0
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            done = max(series(run_dir, "train/loss"), default=0)
        except (ValueError, AssertionError):  # a line being written / pre-truncation duplicates
            done = start
        if done >= start + steps:
            time.sleep(delay)
            break
        time.sleep(0.005)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    return _finish(proc)[0]


def _interrupted_run(run_dir: Path, sets: list[str], plan: list[tuple[str, object]]) -> list[str]:
    """Apply ``plan`` (("save", "phase:n") or ("time", (steps, delay))) then resume until done; returns a log."""
    log = []
    for kind, what in plan:
        extra = ("--resume",) if list_checkpoints(run_dir) else ()
        if kind == "save":
            proc = _start(argv(sets, run_dir, *extra), kill=str(what))
            rc, err = _finish(proc)
        else:
            steps, delay = what  # type: ignore[misc]
            rc = _kill_after_steps(_start(argv(sets, run_dir, *extra)), run_dir, steps, delay)
            err = ""
        log.append(f"{kind} {what}: rc={rc} ckpts={[p.name for p in list_checkpoints(run_dir)]}")
        assert rc in (-signal.SIGKILL, 0), (log, err)
        if rc == 0:
            return log
    for _ in range(3):
        rc, err = _finish(_start(argv(sets, run_dir, *(("--resume",) if list_checkpoints(run_dir) else ()))))
        log.append(f"final: rc={rc}")
        assert rc == 0, (log, err)
        if max(series(run_dir, "train/loss"), default=0) == STEPS:
            return log
    raise AssertionError(log)


def _check_identical(reference: Path, run_dir: Path, log: list[str]) -> None:
    for key in ("train/loss", "val/loss", "train/grad_norm"):
        a, b = series(reference, key), series(run_dir, key)
        assert a == b, (key, log)
    assert sorted(series(run_dir, "train/loss")) == list(range(1, STEPS + 1))
    leftovers = [p.name for p in checkpoint_dir(run_dir).iterdir() if not p.name.startswith("step_")]
    assert not leftovers, (leftovers, log)
    assert [p.name for p in list_checkpoints(run_dir)] == [f"step_{s:06d}" for s in (STEPS - 1, STEPS)]


@pytest.fixture(scope="module")
def reference(text_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sigkill")
    cache = root / "cache"
    run_dir = root / "reference"
    rc, err = _finish(_start(argv(_sets(text_corpus, cache), run_dir)))
    assert rc == 0, err
    return run_dir, cache


def test_two_kills_resume_identically(reference, text_corpus: Path, tmp_path: Path) -> None:
    """Default variant: one kill inside a save (files written, not yet renamed), one at a random moment."""
    ref, cache = reference
    rng = random.Random(7)
    plan = [("save", "manifest:3"), ("time", (rng.randint(1, 3), rng.uniform(0, 0.05)))]
    run_dir = tmp_path / "run"
    log = _interrupted_run(run_dir, _sets(text_corpus, cache), plan)
    assert sum(f"rc={-signal.SIGKILL}" in line for line in log) == 2, log
    _check_identical(ref, run_dir, log)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_many_kills_resume_identically(reference, text_corpus: Path, tmp_path: Path, seed: int) -> None:
    """Every save phase once plus random-time kills, in a seeded random order."""
    ref, cache = reference
    rng = random.Random(seed)
    plan: list[tuple[str, object]] = [("save", f"{phase}:{3 if phase == 'prune' else rng.randint(1, 2)}")
                                      for phase in ("state", "manifest", "renamed", "prune")]
    plan += [("time", (rng.randint(0, 2), rng.uniform(0, 0.1))) for _ in range(2)]
    rng.shuffle(plan)
    run_dir = tmp_path / "run"
    log = _interrupted_run(run_dir, _sets(text_corpus, cache), plan)
    assert sum(f"rc={-signal.SIGKILL}" in line for line in log) >= 4, log
    _check_identical(ref, run_dir, log)
    assert records(run_dir)  # metrics.jsonl survived every kill
