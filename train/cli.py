"""What every command-line tool of ``train`` shares: a failure the user can fix is one ``error: …`` line and exit 2.

User errors (:class:`~hyperp.errors.HyperpError`), file-system errors (the path and the reason: an unwritable or
non-directory ``--out``, a full disk) and running out of memory (with the knobs to turn) never show a traceback;
anything else is a bug and keeps its traceback. Warnings (e.g. a skipped corrupt checkpoint) print as one line each.
"""

from __future__ import annotations

import errno
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from hyperp.errors import ConfigError, HyperpError

EXIT_USAGE = 2  # a user error: config, CLI, data, checkpoint, file system, memory
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)  # the disk (or a limit) refuses more bytes


def error_line(err: BaseException) -> str | None:
    """The message of a failure the user can act on, or None for a bug."""
    from train.memory import is_out_of_memory, out_of_memory_message

    if isinstance(err, HyperpError):
        return str(err)
    if isinstance(err, OSError):
        where = f" {os.fsdecode(err.filename)}" if err.filename else ""
        verb = "cannot write" if err.errno in _FULL else "cannot access"
        return f"{verb}{where}: {err.strerror or err}"
    if is_out_of_memory(err):
        return out_of_memory_message(err)
    return None


def run_cli(command: Callable[[], int | None]) -> int:
    """Run ``command``; a user-facing failure → ``error: …`` on stderr and EXIT_USAGE."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_one_line
            return command() or 0
    except (HyperpError, OSError, MemoryError, RuntimeError) as err:
        line = error_line(err)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return EXIT_USAGE


def _show_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def utf8_path(flag: str, value: str | os.PathLike[str]) -> Path:
    """``value`` as a Path, or ConfigError when it is not valid UTF-8 (the tokenizer and transformers write paths as
    UTF-8 strings: undecodable bytes from the shell would fail only after the work is done)."""
    text = os.fspath(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{flag} {text.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8; choose a UTF-8 "
                          "name") from None
    return Path(text)


def output_dir(flag: str, value: str | os.PathLike[str]) -> Path:
    """A directory argument a tool will write into: valid UTF-8, and not an existing file."""
    path = utf8_path(flag, value)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} exists and is not a directory")
    return path
