"""One writer per run folder: an advisory lock held for the life of a training process.

``RUN/run.lock`` is ``flock``-ed (exclusive, non-blocking) and holds the holder's pid. The kernel drops a flock when
its process dies, however it dies, so a lock file left by a killed run is stale by construction: the next run takes
it over (and says so). A second writer while the holder lives gets one line naming the holder's pid. The file is
removed on release; the inode check in :meth:`RunLock.acquire` makes that safe against a writer that opened the old
file just before (it would otherwise lock an unlinked inode while a third process locks a new one).

Read-only tools (plot, generate, export) never take the lock. Under torchrun only rank 0 takes it.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path
from types import TracebackType

from train.errors import RunLockedError

LOCK_FILE = "run.lock"


class RunLock:
    """``with RunLock(run_dir):`` — creates ``run_dir`` if needed, then holds its lock until the block exits."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise RunLockedError(f"run directory {self.path.parent} is in use by another training process "
                                     f"(pid {holder or 'unknown'}, lock {self.path}); wait for it, stop it, or "
                                     f"choose another --out") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder released and removed the file between our open and flock: try the new one
        self._fd = fd
        stale = _read_pid(fd)
        if stale and stale != os.getpid():
            print(f"note: taking over the lock of process {stale}, which is no longer running", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: see the module docstring
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
