"""Reading a run directory back: records, upper bound, learning-curve tables, text summary."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from activeseg.config import Config, load_yaml
from activeseg.errors import UserError
from activeseg.files import read_records
from activeseg.report.verdict import Spread
from activeseg.simulation.rundir import UPPER_BOUND_FILE, read_split, record_files


def load_records(run_dir: Path) -> list[dict[str, Any]]:
    """All strategy records of a run directory, ordered by strategy, repetition, iteration."""
    records = [r for path in record_files(run_dir) for r in read_records(path)]
    return sorted(records, key=lambda r: (r["strategy"], r["repetition"], r["iteration"]))


def value(record: dict[str, Any], metric: str) -> float:
    """``record[metric]`` as a float (a dotted name reads a nested field, e.g.
    ``seconds.train``); NaN where absent or ``None`` (e.g. not recorded)."""
    v: Any = record
    for key in metric.split("."):
        v = v.get(key) if isinstance(v, dict) else None
    return math.nan if v is None else float(v)


def curves(records: list[dict[str, Any]], metric: str = "test_dice") -> dict[str, np.ndarray]:
    """``metric`` per strategy as ``[repetitions, iterations]`` (NaN where not yet run)."""
    out: dict[str, np.ndarray] = {}
    for name in sorted({r["strategy"] for r in records}):
        own = [r for r in records if r["strategy"] == name]
        reps = max(r["repetition"] for r in own) + 1
        its = max(r["iteration"] for r in own) + 1
        table = np.full((reps, its), np.nan)
        for r in own:
            table[r["repetition"], r["iteration"]] = value(r, metric)
        out[name] = table
    return out


@dataclass(frozen=True)
class Run:
    """A run directory read back: ``records`` of the strategies (ordered as
    :func:`load_records`), ``upper_bound`` records (one per repetition, ordered)."""

    root: Path
    config: Config
    split: dict[str, Any]
    records: list[dict[str, Any]]
    upper_bound: list[dict[str, Any]]

    @property
    def strategies(self) -> list[str]:
        """Strategies with records: in the config's order, then any others by name."""
        present = {r["strategy"] for r in self.records}
        ordered = [s for s in self.config.loop.strategies if s in present]
        return ordered + sorted(present - set(ordered))

    def table(self, metric: str) -> dict[str, np.ndarray]:
        """:func:`curves` of ``metric`` in the order of :attr:`strategies`."""
        tables = curves(self.records, metric)
        return {name: tables[name] for name in self.strategies}

    def of(self, strategy: str, repetition: int | None = None) -> list[dict[str, Any]]:
        """Records of ``strategy`` (and ``repetition``), ordered by iteration."""
        return [
            r
            for r in self.records
            if r["strategy"] == strategy and repetition in (None, r["repetition"])
        ]

    def n_labelled(self, iterations: int) -> np.ndarray:
        """Labelled patches at iterations ``0 .. iterations - 1``, int64 ``[iterations]``."""
        return len(self.split["initial"]) + self.config.loop.query_size * np.arange(iterations)

    def annotated(self, strategy: str, iterations: int) -> np.ndarray:
        """Unique annotated patches (initial set included) of ``strategy`` at iterations
        ``0 .. iterations - 1`` per repetition, float64 ``[R, iterations]``: the records'
        ``n_annotated`` (``n_labelled`` in records without it; both equal unless
        ``loop.pool_policy = keep``), NaN where not run."""
        own = self.of(strategy)
        reps = max((r["repetition"] for r in own), default=-1) + 1
        table = np.full((reps, iterations), np.nan)
        for r in own:
            if r["iteration"] < iterations:
                n = r.get("n_annotated", r["n_labelled"])
                table[r["repetition"], r["iteration"]] = n
        return table

    def x_axis(self, strategy: str, iterations: int) -> np.ndarray:
        """The report's x-axis ``[iterations]`` for ``strategy``: unique annotated patches,
        mean over repetitions (the configured schedule where nothing was recorded)."""
        table = self.annotated(strategy, iterations)
        planned = self.n_labelled(iterations).astype(np.float64)
        with np.errstate(all="ignore"):
            mean = np.nanmean(table, axis=0) if len(table) else planned
        return np.where(np.isnan(mean), planned, mean)

    def common(self) -> tuple[list[int], int]:
        """Repetitions with records for every strategy, and the number of iterations every
        one of those (strategy, repetition) pairs has completed: the block the verdict
        compares (all of a finished run)."""
        tables = curves(self.records)
        if not tables:
            return [], 0
        started = [
            {r for r, row in enumerate(t) if not np.isnan(row).all()} for t in tables.values()
        ]
        reps = sorted(set.intersection(*started))
        done = [int(np.sum(~np.isnan(t[r]))) for t in tables.values() for r in reps]
        return reps, min(done, default=0)


def load_run(root: Path) -> Run:
    """Read a run directory; a missing config or split is a :class:`UserError`."""
    for name in ("config.yaml", "split.json"):
        if not (root / name).exists():
            raise UserError(f"{root} is not a run directory: {name} is missing")
    upper = sorted(read_records(root / UPPER_BOUND_FILE), key=lambda r: r["repetition"])
    return Run(
        root,
        load_yaml(root / "config.yaml"),
        read_split(root),
        load_records(root),
        upper,
    )


def text_summary(run_dir: Path, metric: str = "test_dice") -> str:
    """Mean ± std over repetitions of ``metric`` at the first and last iteration."""
    config = load_yaml(run_dir / "config.yaml")
    records = load_records(run_dir)
    if not records:
        return f"{run_dir}: no completed iteration yet"
    k = config.loop.query_size
    lines = [f"{metric} (mean ± std over repetitions; n = labelled patches)"]
    for name, table in curves(records, metric).items():
        done = ~np.isnan(table).any(axis=0)
        last = int(np.flatnonzero(done)[-1]) if done.any() else 0
        first_n = config.data.n_initial
        lines.append(
            f"  {name:>10}: n={first_n:3d} {_spread(table[:, 0])}   "
            f"n={first_n + k * last:3d} {_spread(table[:, last])}   ({table.shape[0]} reps)"
        )
    return "\n".join(lines)


def _spread(values: np.ndarray) -> str:
    return Spread(tuple(float(v) for v in values if not np.isnan(v))).text()
