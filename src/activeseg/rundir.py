"""The run directory: config, split, per-run JSON-lines records, checkpoints and maps.

Layout of ``--out DIR``::

    config.yaml                      resolved config (schema version inside)
    split.json                       patch ids of initial / pool / val / test, source images
    records-<strategy>-rep<r>.jsonl  one JSON record per completed iteration
    upper_bound.jsonl                one JSON record per repetition: training on the whole pool
    checkpoints/<strategy>-rep<r>.pt model weights of the latest iteration
    maps/<strategy>-rep<r>-it<ii>.npz pool uncertainty maps of each iteration (float16)
    run.lock                         held while a process works on the directory

Every file is written to a temporary name in the same folder and renamed into place, so a
crash never leaves a half-written file under a final name. A record file is only rewritten
whole; an iteration counts as completed once its record is in the file.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from activeseg.config import Config, load_yaml, save_yaml, to_dict
from activeseg.errors import UserError

RECORD_SCHEMA = 1
UPPER_BOUND_FILE = "upper_bound.jsonl"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``."""
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


class RunDirectory:
    """A run directory opened for writing (holds its lock until :meth:`close`)."""

    def __init__(self, root: Path, config: Config, resume: bool) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._lock = _acquire_lock(root / "run.lock")
        try:
            self._check_config(config, resume)
        except BaseException:
            self.close()
            raise

    def _check_config(self, config: Config, resume: bool) -> None:
        path = self.root / "config.yaml"
        if path.exists():
            if not resume:
                raise UserError(
                    f"{self.root} already holds a run; pass --resume to continue it "
                    "or choose another --out"
                )
            saved = load_yaml(path)
            diff = _differences(to_dict(saved), to_dict(config))
            if diff:
                raise UserError(
                    f"{path} was written with other settings ({'; '.join(diff)}); "
                    "resume with the same options or choose another --out"
                )
        else:
            atomic_write_text(path, save_yaml(config))

    def close(self) -> None:
        self._lock.close()

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- split -------------------------------------------------------------------------
    def load_or_save_split(self, split: dict[str, Any]) -> dict[str, Any]:
        """The split stored in the run (checked equal to ``split``), else store ``split``."""
        path = self.root / "split.json"
        if path.exists():
            stored = json.loads(path.read_text())
            if stored != split:
                raise UserError(
                    f"{path} differs from the split the data gives now (data changed?); "
                    "start a new run directory"
                )
            return dict(stored)
        atomic_write_text(path, json.dumps(split, indent=1))
        return split

    # ---- records -----------------------------------------------------------------------
    def record_path(self, strategy: str, repetition: int) -> Path:
        return self.root / f"records-{strategy}-rep{repetition}.jsonl"

    def append_record(self, strategy: str, repetition: int, record: dict[str, Any]) -> None:
        append_json_line(self.record_path(strategy, repetition), record)

    def records(self, strategy: str, repetition: int) -> list[dict[str, Any]]:
        return read_records(self.record_path(strategy, repetition))

    def append_upper_bound(self, record: dict[str, Any]) -> None:
        """Store the upper-bound record (with its ``repetition``) of one repetition. Kept out
        of ``records-*.jsonl`` so that globbing those finds strategies only."""
        append_json_line(self.root / UPPER_BOUND_FILE, record)

    def upper_bound_repetitions(self) -> set[int]:
        """Repetitions whose upper bound is stored."""
        return {r["repetition"] for r in read_records(self.root / UPPER_BOUND_FILE)}

    # ---- checkpoints and maps --------------------------------------------------------
    def save_checkpoint(self, strategy: str, repetition: int, payload: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write_bytes(
            self.root / "checkpoints" / f"{strategy}-rep{repetition}.pt", buffer.getvalue()
        )

    def save_maps(
        self, strategy: str, repetition: int, iteration: int, **arrays: np.ndarray
    ) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
        name = f"{strategy}-rep{repetition}-it{iteration:02d}.npz"
        atomic_write_bytes(self.root / "maps" / name, buffer.getvalue())


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


def _acquire_lock(path: Path) -> IO[str]:
    handle = open(path, "a+")  # noqa: SIM115 - held open for the lifetime of the run
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.close()
        raise UserError(
            f"{path.parent} is in use by another activeseg process; wait for it to finish "
            "or use another --out"
        ) from exc
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Readable ``key: saved -> current`` lines of two nested dicts."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
