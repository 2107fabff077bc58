"""Building the report of a run directory: figures (PNG + SVG), CSVs of the numbers behind
them, and one self-contained HTML page.

Layout (default ``RUN_DIR/report/``; with ``--out FILE.html`` next to that file)::

    report.html               the page; figures embedded as base64 PNG
    <figure>.png, .svg        every figure
    <table>.csv               the numbers behind every figure and table

Patch images and ground-truth masks (for the map figures and the axon counts) are recomputed
from the run's config with :func:`activeseg.simulate.prepare`; if the data cannot be loaded
or no longer gives the run's split, those parts are left out and the page says so.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from activeseg import __version__
from activeseg.config import save_yaml
from activeseg.data.patches import PatchSet
from activeseg.errors import UserError
from activeseg.metrics import Reliability
from activeseg.report import figures as fg
from activeseg.report.html import Figure, Section, Table, render
from activeseg.report.records import Run, curves, load_run, value
from activeseg.report.verdict import (
    ALPHA,
    BASELINE,
    MINUTES_PER_AXON,
    UPPER_FRACTION,
    Spread,
    StrategyCurves,
    Verdict,
    count_axons,
    mean_std,
    sentences,
    verdict,
)
from activeseg.rundir import atomic_write_text
from activeseg.simulate import prepare

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
    data could not be loaded) and the axon count of each training patch id."""

    run: Run
    folder: Path
    patches: PatchSet | None
    axons: dict[int, int] | None
    verdict: Verdict | None

    def figure(self, fig: fg.Figure, name: str, caption: str, half: bool = False) -> Figure:
        """Save ``fig`` as ``name``.png/.svg; the page's embedded copy."""
        return Figure(fg.save(fig, self.folder / name), caption, half)

    def csv(self, name: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([[_cell(v) for v in row] for row in rows])
        atomic_write_text(self.folder / name, buffer.getvalue())


def write_report(
    run_dir: Path, out: Path | None = None, minutes_per_axon: float | None = None
) -> Path:
    """Write the report of ``run_dir`` (HTML at ``out``, default ``run_dir/report/report.html``,
    figures and CSVs next to it; ``minutes_per_axon`` default :data:`MINUTES_PER_AXON`);
    return the HTML path."""
    run = load_run(run_dir)
    html_path = out if out is not None else run_dir / "report" / "report.html"
    if html_path.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out {html_path}: give an .html file name")
    html_path.parent.mkdir(parents=True, exist_ok=True)
    patches, data_note = _load_patches(run)
    axons = None
    if patches is not None:
        ids = np.asarray(run.split["initial"] + run.split["pool"], dtype=np.int64)
        axons = dict(zip(ids.tolist(), count_axons(patches.masks[ids]).tolist(), strict=True))
    v = compute_verdict(run, axons, minutes_per_axon or MINUTES_PER_AXON)
    ctx = Context(run, html_path.parent, patches, axons, v)
    if run.records:
        _write_records_csv(ctx)
    sections = [
        _verdict_section(ctx),
        _curves_section(ctx),
        _maps_section(ctx),
        _selection_section(ctx),
        _quality_section(ctx),
        _cost_section(ctx),
        Section("Configuration", pre=save_yaml(run.config)),
    ]
    meta = _meta(run) + ([data_note] if data_note else [])
    page = render(f"activeseg report: {run.root.resolve().name}", meta, sections)
    atomic_write_text(html_path, page)
    return html_path


# ----------------------------------------------------------------------------- inputs


def _load_patches(run: Run) -> tuple[PatchSet | None, str]:
    try:
        prepared = prepare(run.config.data)
    except (UserError, OSError) as exc:
        return None, f"Data not loaded ({exc}): image panels and annotation hours are left out."
    if prepared.split.to_dict() != run.split:
        return None, (
            f"The data at {run.config.data.source} no longer gives this run's split: image "
            "panels and annotation hours are left out."
        )
    return prepared.patches, ""


def _meta(run: Run) -> list[str]:
    c, s = run.config, run.split
    reps, done = run.common()
    total = c.loop.iterations + 1
    status = "complete" if done == total and len(reps) == c.loop.repetitions else "INCOMPLETE"
    size = f"{c.data.pixel_size} µm/pixel" if c.data.pixel_size else "native pixel size"
    return [
        f"Run {run.root.resolve()} — data {c.data.source}; {c.data.patch_size}-pixel patches "
        f"at {size}; initial {len(s['initial'])}, pool {len(s['pool'])}, validation "
        f"{len(s['val'])}, test {len(s['test'])} patches.",
        f"Strategies {', '.join(c.loop.strategies)}; {c.loop.repetitions} repetitions x "
        f"{c.loop.iterations} iterations, k = {c.loop.query_size} per query; "
        f"{c.train.steps} training steps per model; {c.scoring.mc_samples} MC samples.",
        f"Status: {status} — every strategy has {done} of {total} iterations in "
        f"{len(reps)} of {c.loop.repetitions} repetitions; upper bound: "
        f"{len(run.upper_bound)} repetitions. activeseg {__version__}.",
    ]


def _ordered(run: Run, metric: str) -> dict[str, np.ndarray]:
    """``curves`` of ``metric`` in the run's strategy order."""
    tables = curves(run.records, metric)
    return {name: tables[name] for name in run.strategies}


def _series(run: Run, metric: str) -> list[fg.Series]:
    out = []
    for name, table in _ordered(run, metric).items():
        mean, std, _ = mean_std(table)
        out.append(fg.Series(name, run.x_axis(name, table.shape[1]), mean, std))
    return out


def _upper_levels(run: Run, metric: str) -> list[fg.Level]:
    values = np.array([value(r, metric) for r in run.upper_bound])
    mean, std, n = mean_std(values[:, None] if len(values) else np.full((1, 1), np.nan))
    if n[0] == 0:
        return []
    patches = run.upper_bound[0]["n_labelled"]
    return [fg.Level(f"whole pool ({patches} patches)", float(mean[0]), float(std[0]))]


def _spaced(values: Sequence[T], k: int) -> list[T]:
    """Up to ``k`` evenly spaced elements of ``values``, first and last included."""
    if len(values) <= k:
        return list(values)
    return [values[int(round(i))] for i in np.linspace(0, len(values) - 1, k)]


def _count(v: float) -> int | float:
    """A patch count: an int when whole (a mean over repetitions may not be)."""
    return int(v) if float(v).is_integer() else float(v)


def _cell(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return repr(float(v)) if isinstance(v, (float, np.floating)) else v


# ----------------------------------------------------------------------------- verdict


def compute_verdict(
    run: Run, axons: dict[int, int] | None, minutes_per_axon: float = MINUTES_PER_AXON
) -> Verdict | None:
    """The verdict over the repetitions and iterations every strategy has completed;
    ``axons``: axon count per training patch id (``None``: no hours)."""
    reps, done = run.common()
    if done == 0:
        return None
    n0 = len(run.split["initial"])
    strategy_curves = []
    for name, table in _ordered(run, "test_dice").items():
        added = run.annotated(name, done)[reps] - n0  # unique annotated patches
        if np.all(added == added[:1]):
            added = added[0]
        counts = None
        if axons is not None:  # each annotated patch once, in the order first labelled
            lists = [dict.fromkeys(run.of(name, rep)[done - 1]["labelled"][n0:]) for rep in reps]
            counts = [[axons[p] for p in ids] for ids in lists]
        strategy_curves.append(StrategyCurves(name, added, table[reps, :done], counts))
    upper = [value(r, "test_dice") for r in run.upper_bound if r["repetition"] in reps]
    return verdict(strategy_curves, upper, minutes_per_axon)


_VERDICT_FIELDS = (  # field of StrategyVerdict, column header
    ("final", "final test Dice"),
    ("aulc", "AULC"),
    ("to_baseline", f"patches to {BASELINE}'s final Dice"),
    ("hours_to_baseline", "hours"),
    ("to_upper", f"patches to {UPPER_FRACTION:.0%} of whole pool"),
    ("hours_to_upper", "hours"),
    ("hours_budget", "hours, all added"),
)


def _verdict_section(ctx: Context) -> Section:
    section = Section("1. Verdict: does active learning save annotation?")
    v = ctx.verdict
    if v is None:
        section.notes.append("No strategy has a completed iteration yet.")
        return section
    section.highlight = sentences(v)
    unique = {p.name: p.unique for p in _picks(ctx.run)}
    rows = []
    for rank, s in enumerate(sorted(v.strategies, key=lambda s: -s.aulc.mean), start=1):
        cells = [
            getattr(s, f).text(1 if "to_" in f or "hours" in f else 3, short=True)
            for f, _ in _VERDICT_FIELDS
        ]
        p = s.versus_baseline
        vs = "—" if p is None else f"{p.mean:+.3f} ± {p.std:.3f} (p = {p.p:.2g})"
        rows.append([str(rank), s.name, *cells[:2], vs, *cells[2:], str(unique.get(s.name, 0))])
    header = ["rank", "strategy", "final test Dice", "AULC", "AULC − random (paired)"]
    header += [label for _, label in _VERDICT_FIELDS[2:]] + ["unique picks"]
    caption = (
        f"ranked by AULC (mean over repetitions, best first); "
        f"mean ± std over {v.repetitions} repetitions; patches = added patches; hours = "
        "estimated annotation hours of those patches; (k/n) = reached in k of n repetitions"
    )
    section.tables.append(Table(header, rows, caption))
    section.text.append(_definitions(v))
    if v.upper_target is not None and v.upper_target / UPPER_FRACTION <= max(
        s.final.mean for s in v.strategies
    ):
        section.notes.append(
            "The whole-pool model is not better than the final models of the strategies: with "
            "this training budget more labels no longer help, so the 95 % target is reached "
            "at once and says little. Train longer (train.epochs) to make it informative."
        )
    if ctx.axons is None:
        section.notes.append("Annotation hours need the ground-truth masks, which were not loaded.")
    _write_verdict_csvs(ctx, v)
    return section


def _definitions(v: Verdict) -> str:
    upper = (
        f"{UPPER_FRACTION:.0%} of the whole-pool Dice = {v.upper_target:.3f}"
        if v.upper_target is not None
        else "no upper bound in this run (simulate --upper-bound)"
    )
    base = f"{v.baseline_target:.3f}" if v.baseline_target is not None else "n/a"
    return (
        f"How to read: x = patches added to the initial set (budget {v.budget:g}). 'Added "
        f"patches to reach' a target is, per repetition, the first x whose test Dice is at "
        f"least the target ({BASELINE}'s final Dice = {base}; {upper}); 'not reached' counts "
        f"are shown as (reached/total). AULC = area under the Dice-vs-x curve / budget, the "
        f"mean Dice over the budget. Hours = myelinated axons (connected components of the "
        f"ground truth) in those patches x {v.minutes_per_axon:g} min. A strategy differs "
        f"from {BASELINE} only if a paired t-test over repetitions on the AULC gives "
        f"p < {ALPHA}; otherwise the difference is called within noise. Spread: sample std. "
        "The whole-pool model is trained with the same number of steps as every iteration."
    )


def _write_verdict_csvs(ctx: Context, v: Verdict) -> None:
    fields = [f for f, _ in _VERDICT_FIELDS]
    header = ["strategy"] + [f"{f}_{x}" for f in fields for x in ("mean", "std", "known")]
    header += ["aulc_diff_mean", "aulc_diff_std", "aulc_diff_p", "baseline_target"]
    rows = []
    for s in v.strategies:
        spreads: list[Spread] = [getattr(s, f) for f in fields]
        row: list[Any] = [s.name]
        for sp in spreads:
            row += [sp.mean, sp.std, len(sp.known)]
        p = s.versus_baseline
        row += [None, None, None] if p is None else [p.mean, p.std, p.p]
        rows.append([*row, v.baseline_target])
    ctx.csv("verdict.csv", [*header, "upper_target"], [[*r, v.upper_target] for r in rows])
    reps, _ = ctx.run.common()
    per_rep = [
        [s.name, rep] + [_at(getattr(s, f), i) for f in fields]
        for s in v.strategies
        for i, rep in enumerate(reps)
    ]
    ctx.csv("verdict_per_repetition.csv", ["strategy", "repetition", *fields], per_rep)


def _at(spread: Spread, i: int) -> float | None:
    return spread.values[i] if spread.values else None


# ----------------------------------------------------------------------------- curves


def _curves_section(ctx: Context) -> Section:
    run = ctx.run
    section = Section("2. Learning curves")
    if not run.records:
        return section
    section.text.append(
        "Test metrics of the thresholded prediction over the whole test set (pixels pooled) "
        "versus labelled patches: mean line and ± std band over repetitions; the dashed black "
        "line is the model trained on the whole pool (upper bound), its band the std."
    )
    rows: list[list[Any]] = []
    reps = len({r["repetition"] for r in run.records})
    for metric, label in CURVE_METRICS.items():
        series = _series(run, metric)
        levels = _upper_levels(run, metric)
        v = ctx.verdict
        if metric == "test_dice" and v is not None and v.baseline_target is not None:
            color = fg.strategy_color(BASELINE)
            levels.append(fg.Level(f"{BASELINE} final", v.baseline_target, math.nan, color, ":"))
        title = f"Test {label} vs labelled patches (mean ± std over {reps} repetitions)"
        fig = fg.curve_figure(series, f"test {label}", title, levels)
        name = f"learning_{label.lower()}"
        section.figures.append(ctx.figure(fig, name, title, half=metric != "test_dice"))
        rows += _curve_rows(run, metric)
    if any(r.get("test_ece") is not None for r in run.records):
        rows += [row for metric in QUALITY_METRICS for row in _curve_rows(run, metric)]
    for metric in sorted(k for k in run.records[0] if k.startswith("test_dice_class")):
        label = metric.removeprefix("test_").replace("_", " ")  # "dice class1"
        title = f"Test {label} vs labelled patches (mean ± std over {reps} repetitions)"
        levels = _upper_levels(run, metric)
        fig = fg.curve_figure(_series(run, metric), f"test {label}", title, levels)
        section.figures.append(ctx.figure(fig, f"learning_{metric[5:]}", title, half=True))
        rows += _curve_rows(run, metric)
    ctx.csv(
        "learning_curves.csv",
        ["strategy", "metric", "n_labelled", "added", "mean", "std", "n_repetitions"],
        rows,
    )
    return section


def _curve_rows(run: Run, metric: str) -> list[list[Any]]:
    """CSV rows of one metric: mean, std and count per strategy and iteration, upper bound."""
    n0 = len(run.split["initial"])
    rows: list[list[Any]] = []
    for name, table in _ordered(run, metric).items():
        mean, std, n = mean_std(table)
        x = run.x_axis(name, table.shape[1])
        rows += [
            [name, metric, _count(x[i]), _count(x[i] - n0), mean[i], std[i], int(n[i])]
            for i in range(len(x))
        ]
    for lv in _upper_levels(run, metric):
        count = run.upper_bound[0]["n_labelled"]
        reps = sum(not math.isnan(value(r, metric)) for r in run.upper_bound)
        rows.append(["upper_bound", metric, count, count - n0, lv.mean, lv.std, reps])
    return rows


# ----------------------------------------------------------------------------- maps


def _maps_section(ctx: Context) -> Section:
    section = Section("3. Uncertainty-map evolution")
    section.text.append(
        "For chosen iterations (first repetition), the patch each uncertainty strategy "
        "selected: image, ground truth, MC mean probability, MC std and the map whose "
        "reduction ranked the pool. Std maps share one color scale across rows, ranking "
        "maps another (color bars below each column)."
    )
    rows: list[list[Any]] = []
    for name in ctx.run.strategies:
        panels = _map_panels(ctx, name)
        if not panels:
            continue
        rep, shown = panels
        title = f"{name}: selected patches, repetition {rep}"
        fig = fg.maps_figure(name, rep, shown)
        section.figures.append(ctx.figure(fig, f"maps_{name}", title))
        std_max, rank_max = fg.map_limits(shown)
        rows += [[name, rep, p.iteration, p.patch, p.score, std_max, rank_max] for p in shown]
    if not rows:
        section.notes.append("No uncertainty maps were saved (random only, or save_maps off).")
    header = ["strategy", "repetition", "iteration", "patch", "score", "std_vmax", "ranking_vmax"]
    ctx.csv("uncertainty_maps.csv", header, rows)
    return section


def _map_panels(ctx: Context, name: str) -> tuple[int, list[fg.MapPanel]] | None:
    files = sorted((ctx.run.root / "maps").glob(f"{name}-rep*-it*.npz"))
    if not files:
        return None
    rep = min(int(f.stem.split("-rep")[1].split("-it")[0]) for f in files)
    saved = [(r, _map_file(ctx, name, rep, r)) for r in ctx.run.of(name, rep) if r["selected"]]
    available = [(r, path) for r, path in saved if path is not None]
    panels = []
    for record, path in _spaced(available, MAP_ROWS):
        patch = int(record["selected"][0])
        with np.load(path) as z:
            j = int(np.flatnonzero(z["ids"] == patch)[0])
            mean, std, ranking = (z[k][j].astype(np.float32) for k in ("mean", "std", "map"))
            score = float(z["scores"][j])
        p = ctx.patches
        image = None if p is None else _plane(p.images[patch, 0])
        truth = None if p is None else _plane(p.masks[patch, 0])
        it, n = record["iteration"], record["n_labelled"]
        mean, std, ranking = _plane(mean), _plane(std), _plane(ranking)
        panels.append(fg.MapPanel(it, n, patch, score, image, truth, mean, std, ranking))
    return (rep, panels) if panels else None


def _plane(array: np.ndarray) -> np.ndarray:
    """A 2D map as is; of a volume ``[X, Y, Z]`` the middle plane along the first axis."""
    return array[array.shape[0] // 2] if array.ndim == 3 else array


def _map_file(ctx: Context, name: str, rep: int, record: dict[str, Any]) -> Path | None:
    path = ctx.run.root / "maps" / f"{name}-rep{rep}-it{record['iteration']:02d}.npz"
    return path if path.exists() else None


# ----------------------------------------------------------------------------- selection


def _picks(run: Run) -> list[fg.Picks]:
    position = {p: i for i, p in enumerate(run.split["pool"])}
    return [
        fg.Picks(
            name,
            [
                (r["repetition"], r["iteration"], position[p])
                for r in run.of(name)
                for p in r["selected"]
            ],
        )
        for name in run.strategies
    ]


def _selection_section(ctx: Context) -> Section:
    run = ctx.run
    section = Section("4. Selection behaviour")
    if not run.records:
        return section
    picks = _picks(run)
    section.text.append(
        "Which pool patch each strategy picked, and when (one marker shape per repetition). "
        "Few unique picks across repetitions mean the strategy keeps choosing the same "
        "patches; random spreads its picks over the pool."
    )
    fig = fg.selection_figure(picks, len(run.split["pool"]), run.config.loop.repetitions)
    section.figures.append(ctx.figure(fig, "selection", "Picked pool patches per iteration"))
    rows = [
        [r["strategy"], r["repetition"], r["iteration"], p, s, _axons(ctx, p)]
        for r in run.records
        for p, s in zip(r["selected"], r["selected_scores"], strict=True)
    ]
    header = ["strategy", "repetition", "iteration", "patch", "score", "axons"]
    ctx.csv("selection.csv", header, rows)
    scores, score_rows = _pool_scores(ctx)
    if scores:
        fig = fg.scores_figure(scores)
        caption = "Pool score distributions per iteration, one box per repetition"
        section.figures.append(ctx.figure(fig, "pool_scores", caption))
    header = ["strategy", "repetition", "iteration", "patch", "score", "selected"]
    ctx.csv("pool_scores.csv", header, score_rows)
    return section


def _axons(ctx: Context, patch: int) -> int | None:
    return None if ctx.axons is None else ctx.axons[patch]


def _pool_scores(
    ctx: Context,
) -> tuple[dict[str, list[tuple[int, int, np.ndarray, np.ndarray]]], list[list[Any]]]:
    """Per strategy with saved maps: (repetition, iteration, pool scores, selected scores),
    and the CSV rows."""
    out: dict[str, list[tuple[int, int, np.ndarray, np.ndarray]]] = {}
    rows: list[list[Any]] = []
    for name in ctx.run.strategies:
        for r in ctx.run.of(name):
            path = _map_file(ctx, name, r["repetition"], r)
            if path is None:
                continue
            with np.load(path) as z:
                ids, scores = z["ids"], z["scores"]
            chosen = np.array(r["selected_scores"], dtype=np.float64)
            out.setdefault(name, []).append((r["repetition"], r["iteration"], scores, chosen))
            rows += [
                [name, r["repetition"], r["iteration"], int(i), float(s), int(i in r["selected"])]
                for i, s in zip(ids, scores, strict=True)
            ]
    return out, rows


# ----------------------------------------------------------------------------- quality


def _quality_section(ctx: Context) -> Section:
    run = ctx.run
    section = Section("5. Does the uncertainty point at errors?")
    if not any(r.get("test_uncertainty_auroc") is not None for r in run.records):
        section.notes.append(
            "Not recorded in this run (scoring.test_uncertainty was off, or the run predates it)."
        )
        return section
    section.text.append(
        "On the test set at every iteration: the pixel-level AUROC of the MC std map for "
        "finding the wrong pixels of the thresholded MC mean (1 = every wrong pixel is more "
        "uncertain than every right one, 0.5 = chance), and the expected calibration error "
        "of the MC mean probability (10 equal bins). Reliability diagrams pool the "
        "repetitions; the diagonal is perfect calibration."
    )
    auroc = _series(run, "test_uncertainty_auroc")
    ece = _series(run, "test_ece")
    levels = [_upper_levels(run, "test_uncertainty_auroc"), _upper_levels(run, "test_ece")]
    fig = fg.quality_figure(auroc, ece, levels)
    section.figures.append(ctx.figure(fig, "uncertainty_quality", "AUROC and ECE per iteration"))
    curves_, rows = _reliability(run)
    fig = fg.reliability_figure(curves_)
    section.figures.append(ctx.figure(fig, "reliability", "Reliability diagrams"))
    header = ["strategy", "iteration", "bin", "lower", "upper", "count", "mean_prob", "frac_fg"]
    ctx.csv("reliability.csv", header, rows)
    return section


def _reliability(run: Run) -> tuple[dict[str, list[tuple[str, Reliability]]], list[list[Any]]]:
    out: dict[str, list[tuple[str, Reliability]]] = {}
    rows: list[list[Any]] = []
    for name in run.strategies:
        its = sorted({r["iteration"] for r in run.of(name) if r.get("test_reliability")})
        for it in _spaced(its, 3):
            parts = [r["test_reliability"] for r in run.of(name) if r["iteration"] == it]
            rel = pool_reliability(parts)
            n = int(run.n_labelled(it + 1)[-1])
            out.setdefault(name, []).append((f"{n} labelled", rel))
            bins = len(rel.counts)
            rows += [
                [
                    name,
                    it,
                    b,
                    b / bins,
                    (b + 1) / bins,
                    rel.counts[b],
                    rel.mean_prob[b],
                    rel.frac_fg[b],
                ]
                for b in range(bins)
            ]
    return out, rows


def pool_reliability(parts: Sequence[dict[str, list[float]]]) -> Reliability:
    """One reliability curve from several recorded ones (bin counts add up)."""
    counts = np.sum([p["counts"] for p in parts], axis=0)
    safe = np.maximum(counts, 1)
    mean = np.sum([np.multiply(p["counts"], p["mean_prob"]) for p in parts], axis=0) / safe
    frac = np.sum([np.multiply(p["counts"], p["frac_fg"]) for p in parts], axis=0) / safe
    return Reliability(counts, mean, frac)


# ----------------------------------------------------------------------------- cost


def _cost_section(ctx: Context) -> Section:
    run = ctx.run
    section = Section("6. Cost")
    if not run.records:
        return section
    costs: dict[str, np.ndarray] = {}
    rows: list[list[Any]] = []
    for name in run.strategies:
        tables = [curves(run.of(name), f"seconds.{part}")[name] for part in SECONDS]
        means = np.stack([mean_std(t)[0] for t in tables], axis=1)
        costs[name] = means
        counts = mean_std(tables[0])[2]
        rows += [[name, i, *means[i], int(counts[i])] for i in range(len(means))]
    section.text.append(
        "Wall time per iteration (mean over repetitions): training from scratch, scoring the "
        "pool (MC dropout and ranking) and evaluation (test metrics and, if recorded, test-set "
        "MC dropout)."
    )
    fig = fg.cost_figure(costs)
    section.figures.append(ctx.figure(fig, "cost", "Seconds per iteration"))
    ctx.csv("cost.csv", ["strategy", "iteration", *SECONDS, "n_repetitions"], rows)
    if run.upper_bound:
        train = Spread(tuple(r["seconds"]["train"] for r in run.upper_bound))
        section.text.append(f"Upper-bound training: {train.text(1)} s per repetition.")
    return section


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
