"""``python -m tests.reliability.killable_train ARGS...``: ``python -m train ARGS...`` that can SIGKILL itself
at an exact point inside ``train.checkpoint.save`` (test-only fault injection; production code has no knob).

``RELIABILITY_KILL=<phase>:<n>`` kills the process during the n-th checkpoint save of this invocation, at
``state`` (state.pt written, no manifest), ``manifest`` (both files written, directory not renamed),
``renamed`` (renamed into place, before pruning) or ``prune`` (an old checkpoint renamed to trash, not yet deleted).
"""

from __future__ import annotations

import os
import signal
import sys

import torch


def _install(phase: str, target: int) -> None:
    from train import checkpoint

    calls = {"save": 0, "write": 0, "fsync": 0}
    original_save, original_write, original_fsync = checkpoint.save, checkpoint._write_file, checkpoint._fsync_dir
    original_write_state = checkpoint._write_state
    original_rmtree = checkpoint.shutil.rmtree

    def die(when: bool) -> None:
        if when and calls["save"] == target:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def save(*args, **kwargs):
        calls["save"] += 1
        calls["write"] = calls["fsync"] = 0
        return original_save(*args, **kwargs)

    def written() -> None:  # state.pt is the first file a save writes, the manifest the second
        calls["write"] += 1
        die(phase == "state" and calls["write"] == 1 or phase == "manifest" and calls["write"] == 2)

    def write_state(path, state):
        entry = original_write_state(path, state)
        written()
        return entry

    def write_file(path, data):
        original_write(path, data)
        written()

    def fsync_dir(path):
        original_fsync(path)
        calls["fsync"] += 1
        die(phase == "renamed" and calls["fsync"] == 2)

    class _Shutil:
        @staticmethod
        def rmtree(path, *args, **kwargs):
            die(phase == "prune" and os.path.basename(str(path)).startswith(".trash-"))
            return original_rmtree(path, *args, **kwargs)

    checkpoint.save, checkpoint._write_file, checkpoint._fsync_dir = save, write_file, fsync_dir
    checkpoint._write_state = write_state
    checkpoint.shutil = _Shutil  # only train.checkpoint's view of shutil


if __name__ == "__main__":
    torch.set_num_threads(1)  # identical float reduction order in every invocation
    spec = os.environ.get("RELIABILITY_KILL")
    if spec:
        phase, n = spec.split(":")
        _install(phase, int(n))
    from train.__main__ import main

    sys.exit(main(sys.argv[1:]))
