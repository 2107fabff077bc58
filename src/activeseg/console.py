"""What a command shows while it works, and the ``log.txt`` that keeps it.

* **Progress bars only on a terminal** (or in Jupyter). :func:`progress_bar` is a tqdm bar
  that is off unless standard error is a terminal: redirected to a file or a pipe, output holds no
  cursor-control sequences and no partial lines, only the plain lines below.
* **Plain lines** (one per finished iteration, the data summary, warnings, ...) go to the
  terminal through :func:`echo` (printed above any bar) and to the folder's log through a
  :class:`LogFile`: ``log.txt`` of a run directory or an annotation project holds what the
  terminal showed, without the bars, one header line per command.

``log.txt`` is the one file not written by an atomic rename (:mod:`activeseg.files`): it is
only ever appended to, one ``write`` per line, so processes of a grid that share a run
directory interleave whole lines, and a crash can at most cut its last line.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shlex
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from activeseg import __version__

LOG_FILE = "log.txt"
T = TypeVar("T")
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\r\x08]")


def interactive() -> bool:
    """Whether progress bars belong here: standard error is a terminal, or this is a Jupyter
    kernel (where tqdm draws widgets, not control sequences)."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def progress_bar(
    iterable: Iterable[T] | None = None, *, enabled: bool = True, **options: Any
) -> tqdm[T]:
    """A tqdm bar (``options`` as tqdm's: ``total``, ``desc``, ``unit``, ``leave``, ...) that
    shows only when ``enabled`` and standard error is a terminal."""
    return tqdm(iterable, disable=not (enabled and interactive()), **options)


def echo(line: str) -> None:
    """Print ``line`` to standard output, above any progress bar."""
    tqdm.write(line)


def clean(line: str) -> str:
    """``line`` without terminal control sequences and carriage returns."""
    return _CONTROL.sub("", line)


class LogFile:
    """Appends lines to ``path`` (a folder's ``log.txt``). Lines written before the folder is
    known (:meth:`attach`) are kept and written first."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._pending: list[str] = []

    def __call__(self, line: str) -> None:
        if self.path is None:
            self._pending.append(line)
        else:
            append_lines(self.path, [line])

    def attach(self, path: Path, header: bool = True) -> None:
        """Write to ``path`` from now on, starting with a header line (time, version,
        command) and the lines kept so far."""
        self.path = path
        first = [header_line()] if header else []
        append_lines(path, [*first, *self._pending])
        self._pending.clear()


def append_lines(path: Path, lines: Iterable[str]) -> None:
    """Append ``lines`` (cleaned of control sequences) to ``path``, one write each."""
    with open(path, "a", encoding="utf-8") as f:
        for line in lines:
            for part in clean(line).splitlines() or [""]:
                f.write(part + "\n")
                f.flush()


def header_line() -> str:
    """``"== 2026-01-02 10:11:12 activeseg 0.4.0 (pid 123): activeseg simulate ... =="``."""
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
    return f"== {now} activeseg {__version__} (pid {os.getpid()}): {shlex.join(argv)} =="


def tee(show: Callable[[str], None], keep: Callable[[str], None]) -> Callable[[str], None]:
    """A log function that passes each line to ``show`` (the terminal) and ``keep`` (a
    :class:`LogFile`)."""

    def log(line: str) -> None:
        show(line)
        keep(line)

    return log


def warning_line(message: Warning | str) -> str:
    """How a command shows a warning: one line ``"activeseg: warning: ..."``."""
    return f"activeseg: warning: {message}"


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """A :func:`warnings.showwarning` for the command line: :func:`warning_line` on standard
    error, without the source location."""
    print(warning_line(message), file=sys.stderr)


@contextlib.contextmanager
def logged_warnings(keep: Callable[[str], None]) -> Iterator[None]:
    """Inside, every warning shown is also passed to ``keep`` as :func:`warning_line`
    (shown as before: the command line prints that line with :func:`show_warning`)."""
    previous = warnings.showwarning

    def show(message: Warning | str, *where: Any, **named: Any) -> None:
        keep(warning_line(message))
        previous(message, *where, **named)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous
