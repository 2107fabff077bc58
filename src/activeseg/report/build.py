"""Building the report of a run directory: figures (PNG + SVG), CSVs of the numbers behind
them, and one self-contained HTML page.

Layout (default ``RUN_DIR/report/``; with ``--out FILE.html`` next to that file)::

    report.html               the page; figures embedded as base64 PNG
    <figure>.png, .svg        every figure
    <table>.csv               the numbers behind every figure and table

Patch images and ground-truth masks (for the map figures, the pixel sizes of the header and
the annotation cost) are recomputed from the run's config with
:func:`activeseg.data.prepare.prepare`; if the data cannot be loaded or no longer gives the
run's split, those parts are left out and the page says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from activeseg import __version__
from activeseg.config import save_yaml
from activeseg.data.prepare import Prepared, prepare
from activeseg.errors import UserError
from activeseg.files import atomic_write_text
from activeseg.report.annotation import AXON, annotation_cost
from activeseg.report.context import CURVE_METRICS, QUALITY_METRICS, SECONDS, Context
from activeseg.report.header import describe_patches
from activeseg.report.html import Section, render
from activeseg.report.panels import maps_section, quality_section, selection_section
from activeseg.report.records import Run, load_run, value
from activeseg.report.sections import cost_section, curves_section, verdict_section
from activeseg.report.verdict import compute_verdict
from activeseg.simulation.rundir import same_split


def write_report(
    run_dir: Path,
    out: Path | None = None,
    minutes_per_axon: float | None = None,
    minutes_per_patch: float | None = None,
) -> Path:
    """Write the report of ``run_dir`` (HTML at ``out``, default ``run_dir/report/report.html``,
    figures and CSVs next to it); return the HTML path. Annotation hours: ``minutes_per_patch``
    or ``minutes_per_axon`` when given, else the paper's 3 min per axon for axon/myelin
    labels only (:func:`~activeseg.report.annotation.annotation_cost`)."""
    run = load_run(run_dir)
    cost, cost_note = annotation_cost(run.config, minutes_per_axon, minutes_per_patch)
    html_path = out if out is not None else run_dir / "report" / "report.html"
    if html_path.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out {html_path}: give an .html file name")
    html_path.parent.mkdir(parents=True, exist_ok=True)
    data, data_note = _load_data(run)
    patches = None if data is None else data.patches
    axons = minutes = None
    if patches is not None and cost is not None:
        ids = np.asarray(run.split["initial"] + run.split["pool"], dtype=np.int64)
        units = cost.units(patches.masks[ids])
        minutes = dict(zip(ids.tolist(), (units * cost.minutes).tolist(), strict=True))
        if cost.unit == AXON:
            axons = dict(zip(ids.tolist(), units.tolist(), strict=True))
    v = compute_verdict(run, minutes)
    ctx = Context(run, html_path.parent, patches, axons, v, cost, cost_note)
    if run.records:
        _write_records_csv(ctx)
    sections = [
        verdict_section(ctx),
        curves_section(ctx),
        maps_section(ctx),
        selection_section(ctx),
        quality_section(ctx),
        cost_section(ctx),
        Section("Configuration", pre=save_yaml(run.config)),
    ]
    meta = _meta(run, data) + ([data_note] if data_note else [])
    page = render(f"activeseg report: {run.root.resolve().name}", meta, sections)
    atomic_write_text(html_path, page)
    return html_path


# ----------------------------------------------------------------------------- inputs


def _load_data(run: Run) -> tuple[Prepared | None, str]:
    try:
        prepared = prepare(run.config.data)
    except (UserError, OSError) as exc:
        return None, f"Data not loaded ({exc}): image panels and annotation hours are left out."
    if not same_split(prepared.split_record(), run.split):
        return None, (
            f"The data at {run.config.data.source} no longer gives this run's split: image "
            "panels and annotation hours are left out."
        )
    return prepared, ""


def _meta(run: Run, data: Prepared | None) -> list[str]:
    c, s = run.config, run.split
    reps, done = run.common()
    total = c.loop.iterations + 1
    status = "complete" if done == total and len(reps) == c.loop.repetitions else "INCOMPLETE"
    patches = describe_patches(c.data, None if data is None else data.scales)
    return [
        f"Run {run.root.resolve()} — data {c.data.source}; {patches}; "
        f"initial {len(s['initial'])}, pool {len(s['pool'])}, validation "
        f"{len(s['val'])}, test {len(s['test'])} patches.",
        f"Strategies {', '.join(c.loop.strategies)}; {c.loop.repetitions} repetitions x "
        f"{c.loop.iterations} iterations, k = {c.loop.query_size} per query; "
        f"{c.train.describe_steps()}; {c.scoring.mc_samples} MC samples.",
        f"Status: {status} — every strategy has {done} of {total} iterations in "
        f"{len(reps)} of {c.loop.repetitions} repetitions; upper bound: "
        f"{len(run.upper_bound)} repetitions. activeseg {__version__}.",
    ]


def _write_records_csv(ctx: Context) -> None:
    """Every record flattened: the numbers behind all curves, one row per iteration."""
    metrics = [*CURVE_METRICS, "test_accuracy", *QUALITY_METRICS, "val_dice"]
    header = ["strategy", "repetition", "iteration", "n_labelled", "selected", *metrics]
    header += [f"seconds_{p}" for p in SECONDS]
    rows = [
        [r["strategy"], r["repetition"], r["iteration"], r["n_labelled"]]
        + [" ".join(map(str, r["selected"]))]
        + [value(r, m) for m in metrics]
        + [value(r, f"seconds.{p}") for p in SECONDS]
        for r in ctx.run.records
    ]
    ctx.csv("records.csv", header, rows)
