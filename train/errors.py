"""User-facing errors about what a run reads: data files and checkpoints (the root is :mod:`hyperp.errors`)."""

from __future__ import annotations

from hyperp.errors import HyperpError


class DataError(HyperpError):
    """A data source or token cache is missing, corrupt or inconsistent."""


class CheckpointError(HyperpError):
    """A checkpoint is missing, corrupt, or belongs to a different model."""
