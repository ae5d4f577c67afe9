"""The one exception family users see.

Every problem caused by user input (config values, CLI strings, data files, checkpoints) is raised as a
subclass of :class:`HyperpError` with a one-line message that names the field or file. Command-line entry
points catch :class:`HyperpError`, print ``error: <message>`` and exit with status 2, without a traceback.
"""

from __future__ import annotations


class HyperpError(ValueError):
    """Base class of user-facing errors; the message is a single line naming the culprit."""


class ConfigError(HyperpError):
    """A config value, key or CLI override is invalid."""


class DataError(HyperpError):
    """A data source or token cache is missing, corrupt or inconsistent."""


class CheckpointError(HyperpError):
    """A checkpoint is missing, corrupt, or belongs to a different model."""
