"""What every section of the report needs: the run, the output folder, the patches, the
annotation cost and axon counts, the verdict; how figures and CSVs are saved; shared series
helpers."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from activeseg.data.patches import PatchSet
from activeseg.files import atomic_write_text
from activeseg.report import figures as fg
from activeseg.report.annotation import AnnotationCost
from activeseg.report.html import Figure
from activeseg.report.records import Run, value
from activeseg.report.verdict import Verdict, mean_std

CURVE_METRICS = {
    "test_dice": "Dice",
    "test_iou": "IoU",
    "test_sensitivity": "sensitivity",
    "test_specificity": "specificity",
    "test_precision": "precision",
}
QUALITY_METRICS = {"test_uncertainty_auroc": "pixel AUROC", "test_ece": "ECE"}
SECONDS = ("train", "score", "eval")
MAP_ROWS = 4  # iterations shown in an uncertainty-map figure
T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    """What every section needs: the run, the output folder, the patches (``None`` if the
    data could not be loaded), the axon count of each training patch id (axon/myelin data
    with the data loaded), the verdict; the annotation ``cost`` (``None``: no hours, and
    ``cost_note`` says why)."""

    run: Run
    folder: Path
    patches: PatchSet | None
    axons: dict[int, int] | None
    verdict: Verdict | None
    cost: AnnotationCost | None = None
    cost_note: str = ""

    def figure(self, fig: fg.Figure, name: str, caption: str, half: bool = False) -> Figure:
        """Save ``fig`` as ``name``.png/.svg; the page's embedded copy."""
        return Figure(fg.save(fig, self.folder / name), caption, half)

    def csv(self, name: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([[cell(v) for v in row] for row in rows])
        atomic_write_text(self.folder / name, buffer.getvalue())


def series(run: Run, metric: str) -> list[fg.Series]:
    out = []
    for name, table in run.table(metric).items():
        mean, std, _ = mean_std(table)
        out.append(fg.Series(name, run.x_axis(name, table.shape[1]), mean, std))
    return out


def upper_levels(run: Run, metric: str) -> list[fg.Level]:
    values = np.array([value(r, metric) for r in run.upper_bound])
    mean, std, n = mean_std(values[:, None] if len(values) else np.full((1, 1), np.nan))
    if n[0] == 0:
        return []
    patches = run.upper_bound[0]["n_labelled"]
    return [fg.Level(f"whole pool ({patches} patches)", float(mean[0]), float(std[0]))]


def spaced(values: Sequence[T], k: int) -> list[T]:
    """Up to ``k`` evenly spaced elements of ``values``, first and last included."""
    if len(values) <= k:
        return list(values)
    return [values[int(round(i))] for i in np.linspace(0, len(values) - 1, k)]


def count(v: float) -> int | float:
    """A patch count: an int when whole (a mean over repetitions may not be)."""
    return int(v) if float(v).is_integer() else float(v)


def cell(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return repr(float(v)) if isinstance(v, (float, np.floating)) else v
