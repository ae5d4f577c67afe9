"""The one exception family users see.

Every problem caused by user input (config values, CLI strings, data files, checkpoints) is raised as a
subclass of :class:`HyperpError` with a one-line message that names the field or file. Command-line entry
points catch :class:`HyperpError`, print ``error: <message>`` and exit with status 2, without a traceback.
The family's root and :class:`ConfigError` live here, in the lowest package, because every package validates
its own config; errors about data files and checkpoints belong to the package that reads them (:mod:`train.errors`).
"""

from __future__ import annotations

import typing
from typing import Literal


class HyperpError(ValueError):
    """Base class of user-facing errors; the message is a single line naming the culprit."""


class ConfigError(HyperpError):
    """A config value, key or CLI override is invalid."""


def check_choice(key: str, value: object, allowed: tuple[object, ...]) -> None:
    """The one rule for enum-like config values: ``value`` must be one of ``allowed`` (a ``Literal``'s values)."""
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} must be one of {', '.join(map(repr, allowed))}")


def check_choices(config: object, section: str) -> None:
    """:func:`check_choice` on every ``Literal``-typed field of dataclass ``config`` (called from its
    ``__post_init__``, so direct construction is checked as well as the TOML coercer in :mod:`train.config`)."""
    for name, hint in typing.get_type_hints(type(config)).items():
        if typing.get_origin(hint) is Literal:
            check_choice(f"{section}.{name}", getattr(config, name), typing.get_args(hint))
