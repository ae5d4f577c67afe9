"""User-facing errors about what a run reads and needs: data files, checkpoints, its folder, memory (the root is
:mod:`hyperp.errors`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hyperp.errors import HyperpError


class DataError(HyperpError):
    """A data source or token cache is missing, corrupt or inconsistent."""


class CheckpointError(HyperpError):
    """A checkpoint is missing, corrupt, or belongs to a different model."""


class RunLockedError(HyperpError):
    """Another live process is training in the same run directory."""


class OutOfMemoryError(HyperpError):
    """A run does not fit the device's memory (estimated before allocating, or hit while training)."""


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """OSErrors raised inside name ``path`` when the OS named no file: a failed write or fsync (a full disk, a file
    size limit) reports only the reason, and "No space left on device" without a path tells the user nothing."""
    try:
        yield
    except OSError as err:
        if not err.filename:
            err.filename = str(path)
        raise
