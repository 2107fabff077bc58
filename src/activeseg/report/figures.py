"""The report's figures, drawn on :class:`matplotlib.figure.Figure` (no pyplot, no global
state). Every strategy has one color in every figure (:func:`strategy_color`); the upper
bound (training on the whole pool) is black and dashed."""

from __future__ import annotations

import io
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from activeseg.metrics import Reliability

_FIXED_COLORS = {"random": "#6e6e6e", "std_sum": "#1f77b4", "std_mean": "#2ca02c"}
_FIXED_COLORS["std_edt"] = "#d62728"
_SPARE_COLORS = ("#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
UPPER_COLOR = "#000000"
COST_COLORS = {"train": "#4c72b0", "score": "#dd8452", "eval": "#55a868"}
_MARKERS = "os^Dv<>ph*"
DPI = 110


def strategy_color(name: str) -> str:
    """The color of a strategy, the same in every figure and every run."""
    fixed = _FIXED_COLORS.get(name)
    return fixed or _SPARE_COLORS[zlib.crc32(name.encode()) % len(_SPARE_COLORS)]


def save(fig: Figure, stem: Path) -> bytes:
    """Write ``stem.png`` and ``stem.svg``; return the PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    png = buffer.getvalue()
    stem.with_suffix(".png").write_bytes(png)
    fig.set_layout_engine("none")  # keep the layout just computed: a second pass costs ~1/3
    fig.savefig(stem.with_suffix(".svg"), format="svg", metadata={"Date": None})
    return png


# ------------------------------------------------------------------------- curves


@dataclass(frozen=True)
class Series:
    """Mean and std ``[I]`` over repetitions of one strategy at ``x`` ``[I]`` (NaN std: no
    band)."""

    name: str
    x: np.ndarray
    mean: np.ndarray
    std: np.ndarray


@dataclass(frozen=True)
class Level:
    """A horizontal reference: ``mean ± std`` (std NaN: no band)."""

    label: str
    mean: float
    std: float
    color: str = UPPER_COLOR
    style: str = "--"


def _draw(ax: Axes, series: Sequence[Series], levels: Sequence[Level] = ()) -> None:
    for s in series:
        color = strategy_color(s.name)
        ax.plot(s.x, s.mean, marker="o", markersize=3, color=color, label=s.name)
        band = np.nan_to_num(s.std)
        ax.fill_between(s.x, s.mean - band, s.mean + band, color=color, alpha=0.18, lw=0)
    for lv in levels:
        ax.axhline(lv.mean, color=lv.color, ls=lv.style, lw=1.2, label=lv.label)
        if np.isfinite(lv.std):
            ax.axhspan(lv.mean - lv.std, lv.mean + lv.std, color=lv.color, alpha=0.07, lw=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def curve_figure(
    series: Sequence[Series],
    ylabel: str,
    title: str,
    levels: Sequence[Level] = (),
    xlabel: str = "labelled patches",
) -> Figure:
    """A learning curve: mean line and ± std band per strategy, reference levels."""
    fig = Figure(figsize=(7.0, 4.3), layout="constrained")
    ax = fig.subplots()
    _draw(ax, series, levels)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(loc="lower right", fontsize="small")
    return fig


def quality_figure(
    auroc: Sequence[Series], ece: Sequence[Series], levels: Sequence[Sequence[Level]]
) -> Figure:
    """Test-set uncertainty quality per iteration: AUROC of the std map for wrong pixels,
    and expected calibration error of the MC mean."""
    fig = Figure(figsize=(11.0, 4.0), layout="constrained")
    left, right = fig.subplots(1, 2)
    _draw(left, auroc, levels[0])
    left.axhline(0.5, color="#999999", lw=0.8, ls=":")
    left.set(
        xlabel="labelled patches",
        ylabel="pixel AUROC (std map vs. wrong pixels)",
        title="Does the std map point at errors? (0.5 = chance)",
    )
    _draw(right, ece, levels[1])
    right.set(
        xlabel="labelled patches",
        ylabel="expected calibration error",
        title="Calibration of the MC mean prediction (0 = perfect)",
    )
    left.legend(fontsize="small")
    return fig


def reliability_figure(curves: dict[str, list[tuple[str, Reliability]]]) -> Figure:
    """Reliability diagrams, one panel per strategy, one line per chosen iteration (darker =
    later); repetitions pooled."""
    fig = Figure(figsize=(4.0 * max(len(curves), 1), 4.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(len(curves), 1), squeeze=False)[0])
    for ax, (name, lines) in zip(axes, curves.items(), strict=False):
        ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls=":", label="perfect")
        for j, (label, rel) in enumerate(lines):
            used = rel.counts > 0
            alpha = 0.35 + 0.65 * (j + 1) / len(lines)
            ax.plot(
                rel.mean_prob[used],
                rel.frac_fg[used],
                marker="o",
                markersize=3,
                color=strategy_color(name),
                alpha=alpha,
                label=f"{label} (pooled ECE {rel.ece:.3f})",
            )
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            aspect="equal",
            xlabel="MC mean foreground probability",
            ylabel="observed myelin fraction",
            title=name,
        )
        ax.legend(fontsize="x-small", loc="upper left")
        ax.grid(alpha=0.3)
    return fig


# ------------------------------------------------------------------------- maps


@dataclass(frozen=True)
class MapPanel:
    """One selected pool patch at one iteration; maps ``[H, W]``; ``image`` in [0, 1] and
    ``truth`` {0, 1} are ``None`` when the data could not be loaded."""

    iteration: int
    n_labelled: int
    patch: int
    score: float
    image: np.ndarray | None
    truth: np.ndarray | None
    mean: np.ndarray
    std: np.ndarray
    ranking: np.ndarray


def maps_figure(strategy: str, repetition: int, panels: Sequence[MapPanel]) -> Figure:
    """The selected patch of each chosen iteration: image, ground truth, MC mean, std map and
    ranking map; std and ranking maps each on one color scale shared by all rows, up to the
    99.5th percentile of the shown pixels (brighter pixels saturate)."""
    with_data = panels[0].image is not None
    columns = (["image", "ground truth"] if with_data else []) + [
        "MC mean probability",
        "MC std",
        f"ranking map ({strategy})",
    ]
    fig = Figure(figsize=(2.3 * len(columns) + 0.8, 2.3 * len(panels) + 1.3), layout="constrained")
    axes = fig.subplots(len(panels), len(columns), squeeze=False)
    std_max, rank_max = map_limits(panels)
    top = max([1.0] + [float(p.truth.max()) for p in panels if p.truth is not None])  # labels
    images = {}
    for row, p in zip(axes, panels, strict=True):
        arrays = ([p.image, p.truth] if with_data else []) + [p.mean, p.std, p.ranking]
        scales = ([(0.0, 1.0, "gray"), (0.0, top, "gray")] if with_data else []) + [
            (0.0, 1.0, "viridis"),
            (0.0, std_max, "inferno"),
            (0.0, rank_max, "inferno"),
        ]
        for col, (ax, array, (lo, hi, cmap)) in enumerate(zip(row, arrays, scales, strict=True)):
            images[col] = ax.imshow(array, vmin=lo, vmax=hi, cmap=cmap, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(
            f"iteration {p.iteration}, {p.n_labelled} labelled\npatch {p.patch}\n"
            f"score {p.score:.4g}",
            fontsize="small",
        )
    units = ["p(foreground)", "std of p(foreground) over samples", "per-pixel score"]
    for col, name in enumerate(columns):
        axes[0, col].set_title(name, fontsize="medium", loc="left")
        if col >= len(columns) - 3:
            bar = fig.colorbar(
                images[col], ax=axes[:, col], location="bottom", shrink=0.9, aspect=15, extend="max"
            )
            bar.set_label(units[col - len(columns) + 3], fontsize="small")
    fig.suptitle(f"{strategy}, repetition {repetition}: the patch selected at each iteration")
    return fig


def map_limits(panels: Sequence[MapPanel], q: float = 0.995) -> tuple[float, float]:
    """Shared upper color limits of the std and ranking maps: their ``q`` quantile over all
    shown pixels (1.0 where that is 0)."""
    std = float(np.quantile(np.stack([p.std for p in panels]), q))
    ranking = float(np.quantile(np.stack([p.ranking for p in panels]), q))
    return std or 1.0, ranking or 1.0


# ------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Picks:
    """One strategy's picks: ``(repetition, iteration, pool position)`` triples."""

    name: str
    picks: list[tuple[int, int, int]]

    @property
    def unique(self) -> int:
        return len({p for _, _, p in self.picks})


def _offsets(n: int, half_width: float = 0.3) -> np.ndarray:
    """x offsets ``[n]`` that set ``n`` repetitions side by side around an iteration."""
    return np.linspace(-half_width, half_width, n) if n > 1 else np.zeros(1)


def selection_figure(strategies: Sequence[Picks], pool_size: int, repetitions: int) -> Figure:
    """Which pool patch each strategy picked at which iteration (one marker per repetition)."""
    n = max(len(strategies), 1)
    fig = Figure(figsize=(4.2 * n, 4.6), layout="constrained")
    axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
    offsets = _offsets(repetitions)
    for ax, s in zip(axes, strategies, strict=False):
        for rep in range(repetitions):
            own = [(i, p) for r, i, p in s.picks if r == rep]
            if not own:
                continue
            its, pos = np.array(own).T
            ax.scatter(
                its + offsets[rep],
                pos,
                s=18,
                marker=_MARKERS[rep % len(_MARKERS)],
                color=strategy_color(s.name),
                alpha=0.8,
                label=f"repetition {rep}",
            )
        ax.set(
            title=f"{s.name}: {s.unique} unique of {len(s.picks)} picks",
            xlabel="iteration at which the patch was picked",
            ylim=(-1, pool_size * 1.2 + 1),  # room for the legend
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    axes[0].set_ylabel("pool patch (position in the pool)")
    return fig


def scores_figure(scores: dict[str, list[tuple[int, int, np.ndarray, np.ndarray]]]) -> Figure:
    """Pool score distributions per iteration, one box per repetition side by side (scores
    of different models are not on one scale), the selected patches' scores as markers.
    ``scores[name]``: ``(repetition, iteration, pool scores, selected scores)``."""
    n = max(len(scores), 1)
    fig = Figure(figsize=(6.5 * n, 4.0), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (name, rows) in zip(axes, scores.items(), strict=False):
        color = strategy_color(name)
        reps = sorted({rep for rep, *_ in rows})
        offsets = dict(zip(reps, _offsets(len(reps)), strict=True))
        width = 0.6 / max(len(reps), 1)
        ax.boxplot(
            [s for *_, s, _ in rows],
            positions=[it + offsets[rep] for rep, it, *_ in rows],
            widths=width * 0.8,
            showfliers=False,
            manage_ticks=False,
            medianprops={"color": "black"},
            boxprops={"color": color},
            whiskerprops={"color": color},
            capprops={"color": color},
        )
        for rep in reps:
            own = [(it, c) for r, it, _, c in rows if r == rep]
            x = np.concatenate([np.full(len(c), it + offsets[rep]) for it, c in own])
            y = np.concatenate([c for _, c in own])
            marker = _MARKERS[rep % len(_MARKERS)]
            ax.scatter(x, y, s=16, marker=marker, color=color, label=f"selected, repetition {rep}")
        ax.set(
            title=f"{name}: pool scores per iteration and repetition",
            xlabel="iteration",
            ylabel=f"{name} score of a pool patch",
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    return fig


def cost_figure(costs: dict[str, np.ndarray]) -> Figure:
    """Wall time per iteration, stacked train / score / eval; ``costs[name]`` ``[I, 3]``
    seconds (mean over repetitions)."""
    n = max(len(costs), 1)
    fig = Figure(figsize=(4.6 * n, 3.8), layout="constrained")
    axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
    for ax, (name, table) in zip(axes, costs.items(), strict=False):
        its = np.arange(len(table))
        bottom = np.zeros(len(table))
        for j, part in enumerate(COST_COLORS):
            ax.bar(its, table[:, j], bottom=bottom, color=COST_COLORS[part], label=part)
            bottom += table[:, j]
        ax.set(title=f"{name} ({bottom.sum() / 60:.1f} min per repetition)", xlabel="iteration")
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("seconds (mean over repetitions)")
    axes[0].legend(fontsize="small")
    return fig
