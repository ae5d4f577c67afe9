"""One writer per run folder (issue 22 (4)): a second training on the same --out gets one line naming the holder's
pid and changes nothing; a lock left by a SIGKILLed run is taken over; read-only tools ignore the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides
from tests.runs import argv, assert_one_line_error, series
from train.__main__ import main
from train.lock import LOCK_FILE, RunLock

ROOT = Path(__file__).resolve().parents[2]
_HOLDER = ("import sys, time; from train.lock import RunLock; lock = RunLock(sys.argv[1]); lock.acquire(); "
           "print('locked', flush=True); time.sleep(120)")


@pytest.fixture
def holder(tmp_path: Path):
    """A separate process holding the lock of ``tmp_path/run`` (flock is per open file, so any process counts)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path / "run")], cwd=ROOT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _snapshot(run: Path) -> dict[Path, bytes]:
    return {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_second_writer_is_refused_and_a_killed_holder_is_taken_over(text_corpus: Path, tmp_path: Path, holder,
                                                                     capsys) -> None:
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 2})
    run = tmp_path / "run"
    before = _snapshot(run)
    capsys.readouterr()
    rc = main(argv(sets, run))
    assert_one_line_error(rc, capsys.readouterr().err, "in use by another training process", f"pid {holder.pid}",
                          str(run / LOCK_FILE))
    assert _snapshot(run) == before  # no config.toml, metrics or checkpoints of the refused run

    holder.send_signal(signal.SIGKILL)  # the kernel drops its flock; run.lock still names it
    holder.wait()
    assert (run / LOCK_FILE).read_text().strip() == str(holder.pid)
    assert main(argv(sets, run)) == 0
    err = capsys.readouterr().err
    assert f"taking over the lock of process {holder.pid}" in err
    assert sorted(series(run, "train/loss")) == [1, 2]
    assert not (run / LOCK_FILE).exists()  # released (and removed) at exit


def test_read_only_tools_ignore_the_lock(text_corpus: Path, tmp_path: Path, capsys) -> None:
    from train.plot import main as plot_main

    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 2})
    run = tmp_path / "run"
    assert main(argv(sets, run)) == 0
    with RunLock(run):
        assert plot_main([str(run), "--out", str(tmp_path / "plots")]) == 0
        assert (tmp_path / "plots" / "summary.md").is_file()


@pytest.mark.slow
def test_two_trainings_started_together_one_is_refused(text_corpus: Path, tmp_path: Path) -> None:
    """The issue's reproduction: two real trainings on one --out. Whichever locks first trains; the other is refused
    with one line — by the lock while the first runs, or by the first's checkpoints once it has finished."""
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 30})
    assert main(argv(sets, tmp_path / "warm", "--max-steps", "1")) == 0  # the token cache, so both start at once
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "train", *argv(sets, run)], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    refused = next(err for rc, err in results if rc == 2)
    assert_one_line_error(2, refused, "")
    assert "in use by another training process" in refused or "already has checkpoints" in refused
    assert sorted(series(run, "train/loss")) == list(range(1, 31))  # one run's records, complete
