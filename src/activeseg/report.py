"""Reading a run directory's records back: learning curves and a text summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from activeseg.config import load_yaml
from activeseg.rundir import read_records


def load_records(run_dir: Path) -> list[dict[str, Any]]:
    """All records of a run directory, ordered by strategy, repetition and iteration."""
    records = [r for path in sorted(run_dir.glob("records-*.jsonl")) for r in read_records(path)]
    return sorted(records, key=lambda r: (r["strategy"], r["repetition"], r["iteration"]))


def curves(records: list[dict[str, Any]], metric: str = "test_dice") -> dict[str, np.ndarray]:
    """``metric`` per strategy as ``[repetitions, iterations]`` (NaN where not yet run)."""
    out: dict[str, np.ndarray] = {}
    for name in sorted({r["strategy"] for r in records}):
        own = [r for r in records if r["strategy"] == name]
        reps = max(r["repetition"] for r in own) + 1
        its = max(r["iteration"] for r in own) + 1
        table = np.full((reps, its), np.nan)
        for r in own:
            table[r["repetition"], r["iteration"]] = r[metric]
        out[name] = table
    return out


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
            f"  {name:>10}: n={first_n:3d} {_mean_std(table[:, 0])}   "
            f"n={first_n + k * last:3d} {_mean_std(table[:, last])}   ({table.shape[0]} reps)"
        )
    return "\n".join(lines)


def _mean_std(values: np.ndarray) -> str:
    values = values[~np.isnan(values)]
    return f"{values.mean():.3f} ± {values.std():.3f}" if len(values) else "   -   "
