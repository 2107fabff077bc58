"""The file discipline shared by run directories and annotation projects.

* **Atomic writes**: every file is written to ``.<name>.<random>.tmp`` in its own folder and
  renamed into place (``os.replace``), so a crash never leaves a half-written file under a
  final name; :func:`remove_temporaries` deletes what a killed writer left.
* **One writer**: :func:`acquire_lock` holds an operating-system lock on a lock file
  (``filelock``: ``flock`` on POSIX, ``msvcrt`` on Windows); the operating system releases it
  when its process dies, even by SIGKILL, so a stale lock never blocks the next command.
* **JSON lines**: records are appended by rewriting the whole file atomically, each line
  tagged with :data:`RECORD_SCHEMA`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import filelock

from activeseg.errors import UserError

RECORD_SCHEMA = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def acquire_lock(path: Path, alternative: str = "") -> filelock.BaseFileLock:
    """Hold an exclusive lock on ``path`` (created if needed) until ``.release()``; a second
    holder, in this or another process, gets a :class:`UserError` at once (``alternative``
    is appended to its advice)."""
    lock = filelock.FileLock(path, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout as exc:
        raise UserError(
            f"{path.parent} is in use by another activeseg process; wait for it to finish"
            + (f" {alternative}" if alternative else "")
        ) from exc
    return lock


def remove_temporaries(root: Path) -> list[Path]:
    """Delete the ``.*.tmp`` files and folders a killed writer may have left under ``root``
    (call only while holding its lock); returns what was deleted."""
    found = sorted(p for p in root.rglob(".*.tmp") if p.exists())
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


def disk_usage(root: Path) -> tuple[int, int]:
    """Total bytes and number of the files under ``root``."""
    sizes = [p.stat().st_size for p in root.rglob("*") if p.is_file()]
    return sum(sizes), len(sizes)


def append_json_line(path: Path, record: dict[str, Any]) -> None:
    """Rewrite ``path`` whole with ``record`` (schema version added) as a new last line."""
    old = path.read_bytes() if path.exists() else b""
    line = json.dumps({"schema": RECORD_SCHEMA, **record}, allow_nan=False) + "\n"
    atomic_write_bytes(path, old + line.encode())


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of one JSON-lines file (empty if it does not exist)."""
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{n} is not valid JSON ({exc}); the file is damaged") from exc
        if record.get("schema") != RECORD_SCHEMA:
            raise UserError(f"{path}:{n}: record schema {record.get('schema')!r} unsupported")
        records.append(record)
    return records
