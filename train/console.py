"""The run's console output, also saved as ``RUN_DIR/console.log``.

Everything the process prints to stdout and stderr (data preparation, the run summary, step lines, warnings,
alarms, the final line or error) goes to the terminal as before and into the log, appended across resumes.
Output printed before the run directory exists is held in memory and written when it is attached, so a run that
fails its checks early leaves no folder behind. A live progress bar goes to the terminal only; its step lines are
logged through :func:`log_only`.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path
from typing import TextIO

LOG_NAME = "console.log"


class _Tee(io.TextIOBase):
    def __init__(self, terminal: TextIO, sink: Console) -> None:
        self.terminal, self._sink = terminal, sink

    def write(self, text: str) -> int:
        self.terminal.write(text)
        self._sink.write(text)
        return len(text)

    def flush(self) -> None:
        self.terminal.flush()
        self._sink.flush()

    def isatty(self) -> bool:  # tqdm and the progress display decide on the real terminal
        return self.terminal.isatty()

    def fileno(self) -> int:
        return self.terminal.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.terminal, "encoding", "utf-8")


class Console:
    """Context manager: tees ``sys.stdout`` / ``sys.stderr``; :meth:`attach` starts the file."""

    active: Console | None = None

    def __init__(self, command: str) -> None:
        self._buffer: io.StringIO | None = io.StringIO(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {command}\n")
        self._buffer.seek(0, io.SEEK_END)
        self._file: TextIO | None = None
        self._saved: tuple[TextIO, TextIO] | None = None

    def __enter__(self) -> Console:
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _Tee(sys.stdout, self), _Tee(sys.stderr, self)
        Console.active = self
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
        sys.stdout, sys.stderr = self._saved  # type: ignore[misc]
        Console.active = None
        if self._file is not None:
            self._file.close()

    def attach(self, run_dir: Path) -> None:
        """Append what was held so far to ``run_dir/console.log`` and keep writing there."""
        self._file = open(Path(run_dir) / LOG_NAME, "a", encoding="utf-8", buffering=1)
        self._file.write(self._buffer.getvalue())
        self._buffer = None

    def discard(self) -> None:
        """No log in this process (ranks other than 0): drop what was held and hold nothing more."""
        self._buffer = None

    def write(self, text: str) -> None:
        if self._file is not None:
            self._file.write(text)
        elif self._buffer is not None:
            self._buffer.write(text)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()


def terminal() -> TextIO:
    """The real stdout, for displays that redraw themselves (a progress bar) and must not fill the log."""
    return getattr(sys.stdout, "terminal", sys.stdout)


def log_only(line: str) -> None:
    """A line for the log but not the terminal (the step line of a run showing a live progress bar)."""
    if Console.active is not None:
        Console.active.write(line + "\n")
