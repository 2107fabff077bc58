"""The report's sections on behaviour: uncertainty maps, selection, uncertainty quality."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from activeseg.metrics import Reliability
from activeseg.report import figures as fg
from activeseg.report.context import MAP_ROWS, Context, series, spaced, upper_levels
from activeseg.report.html import Section
from activeseg.report.records import Run
from activeseg.simulation.rundir import maps_path

# ----------------------------------------------------------------------------- maps


def maps_section(ctx: Context) -> Section:
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
    saved = [r["repetition"] for r in ctx.run.of(name) if _map_file(ctx, name, r["repetition"], r)]
    if not saved:
        return None
    rep = min(saved)
    saved = [(r, _map_file(ctx, name, rep, r)) for r in ctx.run.of(name, rep) if r["selected"]]
    available = [(r, path) for r, path in saved if path is not None]
    panels = []
    for record, path in spaced(available, MAP_ROWS):
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
    path = maps_path(ctx.run.root, name, rep, record["iteration"])
    return path if path.exists() else None


# ----------------------------------------------------------------------------- selection


def picks(run: Run) -> list[fg.Picks]:
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


def selection_section(ctx: Context) -> Section:
    run = ctx.run
    section = Section("4. Selection behaviour")
    if not run.records:
        return section
    chosen = picks(run)
    section.text.append(
        "Which pool patch each strategy picked, and when (one marker shape per repetition). "
        "Few unique picks across repetitions mean the strategy keeps choosing the same "
        "patches; random spreads its picks over the pool."
    )
    fig = fg.selection_figure(chosen, len(run.split["pool"]), run.config.loop.repetitions)
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


def quality_section(ctx: Context) -> Section:
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
    auroc = series(run, "test_uncertainty_auroc")
    ece = series(run, "test_ece")
    levels = [upper_levels(run, "test_uncertainty_auroc"), upper_levels(run, "test_ece")]
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
        for it in spaced(its, 3):
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
