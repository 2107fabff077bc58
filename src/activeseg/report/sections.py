"""The report's sections on outcomes: the verdict, the learning curves and the cost."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from activeseg.report import figures as fg
from activeseg.report.context import (
    CURVE_METRICS,
    QUALITY_METRICS,
    SECONDS,
    Context,
    count,
    series,
    upper_levels,
)
from activeseg.report.html import Section, Table
from activeseg.report.panels import picks
from activeseg.report.records import Run, curves, value
from activeseg.report.verdict import (
    ALPHA,
    BASELINE,
    UPPER_FRACTION,
    Spread,
    Verdict,
    mean_std,
    repetitions_needed,
    sentences,
)

# ----------------------------------------------------------------------------- verdict


_VERDICT_FIELDS = (  # field of StrategyVerdict, column header
    ("final", "final test Dice"),
    ("aulc", "AULC"),
    ("to_baseline", f"patches to {BASELINE}'s final Dice"),
    ("hours_to_baseline", "hours"),
    ("to_upper", f"patches to {UPPER_FRACTION:.0%} of whole pool"),
    ("hours_to_upper", "hours"),
    ("hours_budget", "hours, all added"),
)


def verdict_section(ctx: Context) -> Section:
    section = Section("1. Verdict: does active learning save annotation?")
    v = ctx.verdict
    if v is None:
        section.notes.append("No strategy has a completed iteration yet.")
        return section
    section.highlight = sentences(v)
    unique = {p.name: p.unique for p in picks(ctx.run)}
    shown = [(f, label) for f, label in _VERDICT_FIELDS if ctx.cost or "hours" not in f]
    rows = []
    for rank, s in enumerate(sorted(v.strategies, key=lambda s: -s.aulc.mean), start=1):
        cells = [
            getattr(s, f).text(1 if "to_" in f or "hours" in f else 3, short=True) for f, _ in shown
        ]
        p = s.versus_baseline
        vs = "—" if p is None else f"{p.mean:+.3f} ± {p.std:.3f} (p = {p.p:.2g})"
        rows.append([str(rank), s.name, *cells[:2], vs, *cells[2:], str(unique.get(s.name, 0))])
    header = ["rank", "strategy", "final test Dice", "AULC", "AULC − random (paired)"]
    header += [label for _, label in shown[2:]] + ["unique picks"]
    hours = "; hours = estimated annotation hours of those patches" if ctx.cost else ""
    caption = (
        f"ranked by AULC (mean over repetitions, best first); "
        f"mean ± std over {v.repetitions} repetitions; patches = added patches{hours}; "
        "(k/n) = reached in k of n repetitions"
    )
    section.tables.append(Table(header, rows, caption))
    section.text.append(_definitions(v, ctx))
    if v.upper_target is not None and v.upper_target / UPPER_FRACTION <= max(
        s.final.mean for s in v.strategies
    ):
        section.notes.append(
            "The whole-pool model is not better than the final models of the strategies: with "
            "this training budget more labels no longer help, so the 95 % target is reached "
            "at once and says little. Train longer (train.epochs) to make it informative."
        )
    if ctx.cost is None:
        section.notes.append(ctx.cost_note)
    elif ctx.patches is None:
        section.notes.append("Annotation hours need the ground-truth masks, which were not loaded.")
    _write_verdict_csvs(ctx, v)
    return section


def _definitions(v: Verdict, ctx: Context) -> str:
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
        f"mean Dice over the budget. {ctx.cost.definition() + ' ' if ctx.cost else ''}"
        f"A strategy differs from {BASELINE} only if a paired t-test over repetitions on the "
        f"AULC gives p < {ALPHA}; otherwise the difference is called within noise. Spread: "
        "sample std. The whole-pool model is trained with the same settings as every "
        "iteration. Headroom = whole-pool Dice - iteration-0 Dice; training noise = std of the "
        "iteration-0 Dice over repetitions (same data, other seeds); the repetitions estimate "
        "is that of a paired t-test detecting the observed AULC difference with 80 % power."
    )


def _write_verdict_csvs(ctx: Context, v: Verdict) -> None:
    fields = [f for f, _ in _VERDICT_FIELDS]
    header = ["strategy"] + [f"{f}_{x}" for f in fields for x in ("mean", "std", "known")]
    header += ["aulc_diff_mean", "aulc_diff_std", "aulc_diff_p", "repetitions_needed"]
    room = v.headroom
    run_level = [
        v.baseline_target,
        v.upper_target,
        None if room is None else room.gain.mean,
        None if room is None else room.gain.std,
        None if room is None else room.noise,
    ]
    header += ["baseline_target", "upper_target", "headroom_mean", "headroom_std", "noise"]
    rows = []
    for s in v.strategies:
        spreads: list[Spread] = [getattr(s, f) for f in fields]
        row: list[Any] = [s.name]
        for sp in spreads:
            row += [sp.mean, sp.std, len(sp.known)]
        p = s.versus_baseline
        row += [None] * 4 if p is None else [p.mean, p.std, p.p, repetitions_needed(p)]
        rows.append([*row, *run_level])
    ctx.csv("verdict.csv", header, rows)
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


def curves_section(ctx: Context) -> Section:
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
        lines = series(run, metric)
        levels = upper_levels(run, metric)
        v = ctx.verdict
        if metric == "test_dice" and v is not None and v.baseline_target is not None:
            color = fg.strategy_color(BASELINE)
            levels.append(fg.Level(f"{BASELINE} final", v.baseline_target, math.nan, color, ":"))
        title = f"Test {label} vs labelled patches (mean ± std over {reps} repetitions)"
        fig = fg.curve_figure(lines, f"test {label}", title, levels)
        name = f"learning_{label.lower()}"
        section.figures.append(ctx.figure(fig, name, title, half=metric != "test_dice"))
        rows += _curve_rows(run, metric)
    if any(r.get("test_ece") is not None for r in run.records):
        rows += [row for metric in QUALITY_METRICS for row in _curve_rows(run, metric)]
    for metric in sorted(k for k in run.records[0] if k.startswith("test_dice_class")):
        label = metric.removeprefix("test_").replace("_", " ")  # "dice class1"
        title = f"Test {label} vs labelled patches (mean ± std over {reps} repetitions)"
        levels = upper_levels(run, metric)
        fig = fg.curve_figure(series(run, metric), f"test {label}", title, levels)
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
    for name, table in run.table(metric).items():
        mean, std, n = mean_std(table)
        x = run.x_axis(name, table.shape[1])
        rows += [
            [name, metric, count(x[i]), count(x[i] - n0), mean[i], std[i], int(n[i])]
            for i in range(len(x))
        ]
    for lv in upper_levels(run, metric):
        whole = run.upper_bound[0]["n_labelled"]
        reps = sum(not math.isnan(value(r, metric)) for r in run.upper_bound)
        rows.append(["upper_bound", metric, whole, whole - n0, lv.mean, lv.std, reps])
    return rows


# ----------------------------------------------------------------------------- cost


def cost_section(ctx: Context) -> Section:
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
    section.text.append(
        f"Annotation time (the verdict's hours): {ctx.cost.definition()}"
        if ctx.cost
        else ctx.cost_note
    )
    return section
