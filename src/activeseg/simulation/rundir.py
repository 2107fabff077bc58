"""The run directory of a simulation: config, split, records, checkpoints and maps.

Layout of ``--out DIR`` (this module is its one description; the report reads it through
:func:`record_files`, :func:`read_split` and :func:`maps_path`)::

    config.yaml                      resolved config (schema version inside)
    split.json                       patch ids of initial / pool / val / test, source images
    records-<strategy>-rep<r>.jsonl  one JSON record per completed iteration
    upper_bound.jsonl                one JSON record per repetition: training on the whole pool
    checkpoints/<strategy>-rep<r>.pt the model of the latest iteration (activeseg.learners format)
    maps/<strategy>-rep<r>-it<ii>.npz pool uncertainty maps of each iteration (float16)
    run.lock                         held while a process works on the directory
    environment.json                 versions, commit, device, CPU, threads, precision
                                     (:mod:`activeseg.environment`; earlier sessions that
                                     differ under "earlier")
    log.txt                          the lines shown, appended per session
                                     (:mod:`activeseg.console`; the one appended file)

Files are written atomically and one process at a time holds the lock (:mod:`activeseg.files`).
A record file is only rewritten whole; an iteration counts as completed once its record is in
the file. Temporaries left by a killed process are never read (no reader matches them) and
are deleted when the directory is next opened under its lock.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any

import filelock
import numpy as np
import torch

from activeseg.config import Config, load_yaml, save_yaml, to_dict
from activeseg.errors import UserError
from activeseg.files import (
    acquire_lock,
    append_json_line,
    atomic_write_bytes,
    atomic_write_text,
    read_records,
    remove_temporaries,
)

UPPER_BOUND_FILE = "upper_bound.jsonl"
CHECKPOINTS = "checkpoints"
MAPS = "maps"


def record_files(root: Path) -> list[Path]:
    """The strategies' record files of the run directory ``root`` (sorted)."""
    return sorted(root.glob("records-*.jsonl"))


def read_split(root: Path) -> dict[str, Any]:
    """The stored ``split.json`` of ``root``."""
    return dict(json.loads((root / "split.json").read_text()))


def same_split(current: dict[str, Any], stored: dict[str, Any]) -> bool:
    """Whether the split the data gives now equals a stored one (a ``split.json`` written
    before ``data_sha256`` existed is compared on its patch ids and sources only)."""
    if "data_sha256" not in stored:
        current = {k: v for k, v in current.items() if k != "data_sha256"}
    return current == stored


def maps_path(root: Path, strategy: str, repetition: int, iteration: int) -> Path:
    return root / MAPS / f"{strategy}-rep{repetition}-it{iteration:02d}.npz"


def checkpoint_path(root: Path, strategy: str, repetition: int) -> Path:
    return root / CHECKPOINTS / f"{strategy}-rep{repetition}.pt"


class RunDirectory:
    """A run directory opened for writing (holds its lock until :meth:`close`)."""

    _lock: filelock.BaseFileLock | None

    def __init__(self, root: Path, config: Config, resume: bool) -> None:
        self.root = root
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"cannot create the run directory {root} ({exc}); choose another --out"
            ) from exc
        self._lock = acquire_lock(root / "run.lock", "or use another --out")
        try:
            remove_temporaries(root)
            self._check_config(config, resume)
        except BaseException:
            self.close()
            raise

    def _check_config(self, config: Config, resume: bool) -> None:
        path = self.root / "config.yaml"
        if not path.exists() and any(p.name != "run.lock" for p in self.root.iterdir()):
            raise UserError(
                f"{self.root} is not empty and holds no activeseg run (no config.yaml); "
                "choose a new or empty --out"
            )
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

    @classmethod
    def attach(cls, root: Path) -> RunDirectory:
        """The run directory ``root`` whose lock another process holds (the grid's driver,
        whose runs each write their own record, checkpoint and maps files here): no lock,
        no check, no clean-up."""
        if not (root / "config.yaml").exists():
            raise UserError(
                f"{root} holds no run (no config.yaml) on this machine: a grid's workers "
                "must see its --out; on a multi-node cluster put it on a shared file system"
            )
        run = cls.__new__(cls)
        run.root, run._lock = root, None
        return run

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

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
            if not same_split(split, stored):
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
        atomic_write_bytes(checkpoint_path(self.root, strategy, repetition), buffer.getvalue())

    def load_checkpoint(self, strategy: str, repetition: int) -> dict[str, Any]:
        """The payload of :meth:`save_checkpoint` (tensors on the CPU)."""
        path = checkpoint_path(self.root, strategy, repetition)
        try:
            payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError) as exc:
            raise UserError(
                f"cannot read the checkpoint {path} ({exc}); start a new --out"
            ) from exc
        return payload

    def maps_path(self, strategy: str, repetition: int, iteration: int) -> Path:
        return maps_path(self.root, strategy, repetition, iteration)

    def maps_writer(self, strategy: str, repetition: int, iteration: int, n: int) -> MapsWriter:
        """A :class:`MapsWriter` for the ``n`` pool patches of one iteration."""
        return MapsWriter(self.maps_path(strategy, repetition, iteration), n)


class MapsWriter:
    """Streams per-pixel maps of ``n`` patches, chunk by chunk, into one ``.npz`` at ``path``.

    Each named map ``[k, H, W]`` is appended as float16 to its own ``.npy`` file in a
    temporary folder next to ``path``; :meth:`commit` zips them (deflate, streamed from disk)
    with ``ids`` ``[n]`` int64 and ``scores`` ``[n]`` float64 and renames the archive into
    place. Memory holds one chunk at a time; the result reads like ``np.savez_compressed``'s.
    """

    def __init__(self, path: Path, n: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.n = path, n
        self._dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        self._files: dict[str, IO[bytes]] = {}
        self._ids = np.zeros(n, dtype=np.int64)  # allocated up front: no growth per chunk
        self._scores = np.zeros(n, dtype=np.float64)
        self._written = 0

    def add(self, ids: np.ndarray, scores: np.ndarray, **maps: np.ndarray) -> None:
        """Append the next ``k`` patches: ``ids`` and ``scores`` ``[k]``, maps ``[k, H, W]``."""
        k = len(ids)
        if self._written + k > self.n:
            raise ValueError(f"{k} more patches than the {self.n - self._written} expected")
        if len(scores) != k:
            raise ValueError(f"{len(scores)} scores for {k} patches")
        if self._written and set(maps) != set(self._files):
            raise ValueError(
                f"maps {sorted(maps)} differ from the first chunk's {sorted(self._files)}"
            )
        for name, array in maps.items():
            if len(array) != k:
                raise ValueError(f"map {name!r} has {len(array)} patches, not {k}")
            if name not in self._files:
                self._files[name] = self._open_npy(name, (self.n, *array.shape[1:]))
            self._files[name].write(np.ascontiguousarray(array, dtype=np.float16).tobytes())
        self._ids[self._written : self._written + k] = ids
        self._scores[self._written : self._written + k] = scores
        self._written += k

    def _open_npy(self, name: str, shape: tuple[int, ...]) -> IO[bytes]:
        handle = open(self._dir / f"{name}.npy", "wb")  # noqa: SIM115 - closed in commit/discard
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16))}
        np.lib.format.write_array_header_2_0(
            handle, {**header, "fortran_order": False, "shape": shape}
        )
        return handle

    def commit(self) -> None:
        """Write the archive under its final name (all ``n`` patches must have been added)."""
        if self._written != self.n:
            raise ValueError(f"{self._written} of {self.n} patches were added")
        self._close_files()
        archive = self._dir / "maps.npz"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for name, values in (("ids", self._ids), ("scores", self._scores)):
                buffer = io.BytesIO()
                np.save(buffer, values)
                zf.writestr(f"{name}.npy", buffer.getvalue())
            for name in self._files:
                zf.write(self._dir / f"{name}.npy", f"{name}.npy")
        with open(archive, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(archive, self.path)
        self.discard()

    def discard(self) -> None:
        """Drop everything written so far (the final file, if any, is left as it was)."""
        self._close_files()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _close_files(self) -> None:
        for handle in self._files.values():
            handle.close()


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
