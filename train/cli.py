"""What every command line of the project shares: ``--help`` with each option's default, and bad input reported
as one ``error: ...`` line with exit code 2 (no usage block, no traceback).

Spellings are the same in every command: ``--run DIR`` names one run, ``--checkpoint STEP`` one of its checkpoints
(default: the newest that verifies), ``--max-steps N`` a step budget, ``--out DIR`` where results go, ``--set
KEY=VALUE`` a config override.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from hyperp.errors import ConfigError, HyperpError

EXIT_USAGE = 2  # a user error: config, CLI, data, checkpoint, file system


class _DefaultsFormatter(argparse.HelpFormatter):
    """argparse's ArgumentDefaultsHelpFormatter without the noise: no "(default: None)", "[]" or "", none for flags."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        hidden = action.default is None or action.default is False or action.default in ("", [], argparse.SUPPRESS)
        shown = not hidden and not action.required  # `is False`: a default of 0 is shown
        if shown and "%(default)" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a :class:`ConfigError` (printed as one line by :func:`run_main`)."""

    def __init__(self, prog: str, description: str, **kwargs) -> None:
        super().__init__(prog=prog, description=description, formatter_class=_DefaultsFormatter, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message.splitlines()[0]} (see {self.prog} --help)")


def add_run_args(parser: argparse.ArgumentParser, what: str) -> None:
    """``--run DIR`` and ``--checkpoint STEP``, spelled alike in every command that reads a run."""
    parser.add_argument("--run", required=True, metavar="DIR", help=f"run directory to {what} (runs/NAME)")
    parser.add_argument("--checkpoint", type=int, default=None, metavar="STEP",
                        help="the checkpoint of this step (default: the newest one that verifies)")


def run_main(command: Callable[[], int | None]) -> int:
    """Run a command's body; a user error (bad argument, config, data, checkpoint, unreadable file) becomes one
    ``error: ...`` line on stderr and exit code 2."""
    try:
        return command() or 0
    except HyperpError as err:
        print(f"error: {err}", file=sys.stderr)
    except OSError as err:
        where = f" {err.filename}" if err.filename else ""
        print(f"error: cannot access{where}: {err.strerror or err}", file=sys.stderr)
    return EXIT_USAGE
