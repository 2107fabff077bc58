"""The annotation-effort verdict: pure arithmetic on learning curves, no I/O.

Definitions (x = added patches, i.e. labelled patches minus the initial set; one value per
repetition, summarised as mean ± sample std over repetitions):

* **patches to reach** a target Dice: the smallest x at which the repetition's test Dice is
  >= the target (first crossing, no interpolation); ``None`` ("not reached") if it never is.
  Targets: (a) the final Dice of the baseline (``random``), mean over its repetitions;
  (b) :data:`UPPER_FRACTION` of the upper-bound Dice (training on the whole pool), mean over
  repetitions.
* **AULC**: the area under the Dice-vs-x curve (trapezoids) divided by the x range, i.e. the
  mean Dice over the annotation budget (1.0 = perfect everywhere).
* **hours**: the annotation minutes of the added patches up to that x / 60; how a patch is
  priced (myelinated axons x minutes, or a flat cost per patch) and for which data is
  decided in :mod:`activeseg.report.annotation`.
* **within noise**: a strategy differs from the baseline only if a two-sided paired t-test on
  the per-repetition AULC differences (repetitions share their seeds, so their iteration-0
  models are identical) gives p < :data:`ALPHA`; otherwise the sentence says "within noise".
* **headroom and noise**: what labels can move at all — the whole-pool Dice minus the
  iteration-0 Dice, per repetition — against the training noise, the sample std of the
  iteration-0 Dice over repetitions (same data and initial set, other seeds). Unless the
  headroom exceeds :data:`NOISE_FACTOR` times the noise, no strategy can be told apart and the
  verdict says so first.
* **power**: the repetitions a paired t-test (:data:`ALPHA`, power :data:`POWER`) needs to
  detect an AULC difference of the size observed, from the noncentral t distribution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage, stats

if TYPE_CHECKING:
    from activeseg.report.records import Run

UPPER_FRACTION = 0.95
ALPHA = 0.05
POWER = 0.8  # of the repetitions estimate
NOISE_FACTOR = 3.0  # the headroom must exceed this many times the training noise
BASELINE = "random"


@dataclass(frozen=True)
class Spread:
    """One value per repetition, ``None`` where not reached; no values at all: not
    available (e.g. no upper bound, or no annotation cost)."""

    values: tuple[float | None, ...]

    @property
    def known(self) -> np.ndarray:
        return np.array([v for v in self.values if v is not None], dtype=np.float64)

    @property
    def mean(self) -> float:
        return float(self.known.mean()) if len(self.known) else math.nan

    @property
    def std(self) -> float:
        """Sample std (ddof = 1); NaN with fewer than two values."""
        return float(self.known.std(ddof=1)) if len(self.known) >= 2 else math.nan

    def text(self, digits: int = 3, short: bool = False) -> str:
        """``"0.812 ± 0.010"``; ``"6.0 ± 2.0 (2/3 reached)"`` (``short``: ``"(2/3)"``);
        ``"not reached (0/3)"``; ``"n/a"``."""
        n, total = len(self.known), len(self.values)
        if n == 0:
            return f"not reached (0/{total})" if total else "n/a"
        body = f"{self.mean:.{digits}f}"
        if n >= 2:
            body += f" ± {self.std:.{digits}f}"
        if n == total:
            return body
        return f"{body} ({n}/{total})" if short else f"{body} ({n}/{total} reached)"


def mean_std(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NaN-aware mean, sample std (ddof = 1; NaN where fewer than two) and count along
    ``axis``; NaN entries are missing values."""
    n = np.sum(~np.isnan(values), axis=axis)
    total = np.nansum(values, axis=axis)
    mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    dev = np.nansum((values - np.expand_dims(mean, axis)) ** 2, axis=axis)
    std = np.where(n >= 2, np.sqrt(dev / np.maximum(n - 1, 1)), np.nan)
    return mean, std, n


def patches_to_reach(added: np.ndarray, dice: np.ndarray, target: float) -> float | None:
    """Smallest ``added[i]`` with ``dice[i] >= target`` (``[I]`` each; NaN never reaches),
    else ``None``."""
    reached = np.flatnonzero(np.nan_to_num(dice, nan=-np.inf) >= target)
    return float(added[reached[0]]) if len(reached) else None


def aulc(added: np.ndarray, dice: np.ndarray, end: float | None = None) -> float:
    """Area under ``dice`` over ``added`` (``[I]``, non-decreasing) from ``added[0]`` to
    ``end`` (default ``added[-1]``; a curve that stops earlier keeps its last Dice up to
    ``end``), divided by that range: the mean Dice over the annotation budget. With no range
    (a single point, or nothing new annotated) the mean of ``dice``."""
    x = np.asarray(added, dtype=np.float64)
    y = np.asarray(dice, dtype=np.float64)
    end = float(x[-1]) if end is None else end
    if end > x[-1]:
        x, y = np.append(x, end), np.append(y, y[-1])
    if end <= x[0]:
        return float(np.mean(y))
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))
    return area / (end - float(x[0]))


def hours(minutes: Sequence[float], n: float | None) -> float | None:
    """Annotation hours of the first ``n`` added patches whose annotation times are
    ``minutes`` (in the order they were added); ``None`` if ``n`` is ``None``."""
    if n is None:
        return None
    return float(sum(minutes[: int(n)])) / 60.0


def count_axons(masks: np.ndarray) -> np.ndarray:
    """Myelinated axons per patch, int64 ``[N]``: 8-connected components of the foreground of
    ``masks`` ``[N, 1, H, W]`` ({0, 1}). Each myelin ring is one component; touching sheaths
    merge (an undercount) and axons cut by the patch border count whole (an overcount).
    Volumes ``[N, 1, D, H, W]`` (any labels): 26-connected components of the non-background."""
    structure = np.ones((3,) * (masks.ndim - 2), dtype=bool)
    return np.array(
        [ndimage.label(m[0] > 0, structure=structure)[1] for m in masks], dtype=np.int64
    )


@dataclass(frozen=True)
class Paired:
    """Paired per-repetition differences ``a - b``: mean, sample std, count, two-sided p."""

    mean: float
    std: float
    n: int
    p: float

    @property
    def clear(self) -> bool:
        """Whether the difference is beyond noise (p < :data:`ALPHA`)."""
        return self.p < ALPHA


def paired_test(a: Sequence[float], b: Sequence[float]) -> Paired:
    """Two-sided paired t-test of ``a - b`` over repetitions (same length). With zero spread
    the p-value is 0 for a non-zero mean and 1 for a zero one; NaN with one repetition."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return Paired(mean, math.nan, n, math.nan)
    std = float(d.std(ddof=1))
    if std == 0.0:
        return Paired(mean, 0.0, n, 0.0 if mean != 0.0 else 1.0)
    t = mean / (std / math.sqrt(n))
    return Paired(mean, std, n, float(2 * stats.t.sf(abs(t), df=n - 1)))


def repetitions_needed(
    difference: Paired, alpha: float = ALPHA, power: float = POWER, limit: int = 10_000
) -> int | None:
    """The smallest number of repetitions with which a two-sided paired t-test at ``alpha``
    detects a true mean difference of ``difference.mean`` (per-repetition sample std
    ``difference.std``) with probability ``power``; ``None`` when unknown (fewer than two
    repetitions, a zero difference, or more than ``limit``). Noncentral t: with effect size
    ``d = mean / std``, the test statistic of ``n`` pairs is t(n - 1, d·sqrt(n))."""
    if difference.n < 2 or not math.isfinite(difference.std) or difference.mean == 0.0:
        return None
    if difference.std == 0.0:
        return 2
    d = abs(difference.mean) / difference.std
    for n in range(2, limit + 1):
        critical = stats.t.ppf(1 - alpha / 2, df=n - 1)
        shift = d * math.sqrt(n)
        achieved = stats.nct.sf(critical, n - 1, shift) + stats.nct.cdf(-critical, n - 1, shift)
        if achieved >= power:
            return n
    return None


@dataclass(frozen=True)
class Headroom:
    """``gain``: the whole-pool Dice minus the iteration-0 Dice, per repetition; ``noise``:
    the sample std of the iteration-0 Dice over repetitions (NaN with fewer than two)."""

    gain: Spread
    noise: float

    @property
    def clear(self) -> bool | None:
        """Whether the gain exceeds :data:`NOISE_FACTOR` x the noise (``None``: unknown)."""
        if not len(self.gain.known) or not math.isfinite(self.noise):
            return None
        return bool(self.gain.mean > NOISE_FACTOR * self.noise)


def headroom(initial: Sequence[float], upper: Sequence[float]) -> Headroom | None:
    """The :class:`Headroom` of iteration-0 and whole-pool Dice of the same repetitions
    (``None`` without an upper bound)."""
    if not len(upper) or len(upper) != len(initial):
        return None
    gain = tuple(float(u - i) for u, i in zip(upper, initial, strict=True))
    noise = float(np.std(initial, ddof=1)) if len(initial) >= 2 else math.nan
    return Headroom(Spread(gain), noise)


@dataclass(frozen=True)
class StrategyCurves:
    """One strategy's test Dice ``dice`` ``[R, I]`` at ``added`` ``[I]`` (or, when the added
    counts differ between repetitions, e.g. under ``loop.pool_policy = keep``, ``[R, I]``)
    patches, and the annotation minutes of the patches it added in each repetition (in
    order; ``None`` if unknown)."""

    name: str
    added: np.ndarray
    dice: np.ndarray
    minutes: list[list[float]] | None = None


@dataclass(frozen=True)
class StrategyVerdict:
    name: str
    final: Spread
    aulc: Spread
    to_baseline: Spread  # added patches to reach the baseline's final Dice
    to_upper: Spread  # added patches to reach UPPER_FRACTION of the upper bound
    hours_to_baseline: Spread
    hours_to_upper: Spread
    hours_budget: Spread  # hours of all added patches
    versus_baseline: Paired | None  # AULC difference to the baseline


@dataclass(frozen=True)
class Verdict:
    strategies: list[StrategyVerdict]
    baseline: str | None
    baseline_target: float | None  # the baseline's final Dice (mean over repetitions)
    upper_target: float | None  # UPPER_FRACTION x mean upper-bound Dice
    budget: float  # added patches at the last iteration compared
    repetitions: int
    headroom: Headroom | None = None


def verdict(
    curves: Sequence[StrategyCurves],
    upper_dice: Sequence[float] = (),
    baseline: str = BASELINE,
) -> Verdict:
    """The verdict of strategies whose curves share ``added`` and repetitions (row ``r`` of
    every ``dice`` is repetition ``r``); ``upper_dice``: upper-bound Dice per repetition."""
    base = next((c for c in curves if c.name == baseline), None)
    base_target = float(base.dice[:, -1].mean()) if base is not None else None
    upper_target = UPPER_FRACTION * float(np.mean(upper_dice)) if len(upper_dice) else None
    end = max((float(np.max(c.added)) for c in curves), default=0.0)  # one x-range for all
    aulcs = {c.name: [aulc(x, d, end) for x, d in zip(_x(c), c.dice, strict=True)] for c in curves}
    out = []
    for c in curves:
        to_base = _reach(c, base_target)
        to_upper = _reach(c, upper_target)
        paired = None
        if base is not None and c is not base:
            paired = paired_test(aulcs[c.name], aulcs[base.name])
        out.append(
            StrategyVerdict(
                name=c.name,
                final=Spread(tuple(float(d[-1]) for d in c.dice)),
                aulc=Spread(tuple(aulcs[c.name])),
                to_baseline=Spread(tuple(to_base)),
                to_upper=Spread(tuple(to_upper)),
                hours_to_baseline=_spent(c, to_base),
                hours_to_upper=_spent(c, to_upper),
                hours_budget=_spent(c, [float(x[-1]) for x in _x(c)]),
                versus_baseline=paired,
            )
        )
    budget = float(np.max(curves[0].added[..., -1])) if curves else 0.0
    reps = len(curves[0].dice) if curves else 0
    first = (base or curves[0]).dice[:, 0] if curves else np.empty(0)
    room = headroom(first.tolist(), list(upper_dice))
    return Verdict(
        out,
        base.name if base else None,
        base_target,
        upper_target,
        budget,
        reps,
        room,
    )


def _reach(c: StrategyCurves, target: float | None) -> list[float | None]:
    """Added patches to reach ``target`` in each repetition of ``c`` (none without target)."""
    if target is None:
        return []
    return [patches_to_reach(x, d, target) for x, d in zip(_x(c), c.dice, strict=True)]


def _x(c: StrategyCurves) -> np.ndarray:
    """The added patches of every repetition of ``c``, ``[R, I]``."""
    return np.broadcast_to(c.added, c.dice.shape)


def _spent(c: StrategyCurves, n: Sequence[float | None]) -> Spread:
    """Hours of the first ``n[r]`` patches added in each repetition ``r`` of ``c``."""
    if c.minutes is None or not n:
        return Spread(())
    return Spread(tuple(hours(m, k) for m, k in zip(c.minutes, n, strict=True)))


def sentences(v: Verdict) -> list[str]:
    """Whether the run can tell strategies apart at all, then one plain-language sentence per
    non-baseline strategy (or a reason there is none)."""
    room = _headroom_sentence(v.headroom)
    if v.baseline is None:
        return [*room, f"No '{BASELINE}' baseline in this run: no comparison can be made."]
    base = next(s for s in v.strategies if s.name == v.baseline)
    out = list(room)
    for s in v.strategies:
        if s.versus_baseline is None:
            continue
        out.append(_sentence(s, base, v))
    return out if len(out) > len(room) else [*out, "Only the baseline was run: nothing to compare."]


def _headroom_sentence(h: Headroom | None) -> list[str]:
    """The sentence on what labels can move in this run (none without an upper bound)."""
    if h is None:
        return []
    gain = f"{h.gain.text()} Dice"
    if h.clear is None:
        return [
            f"Headroom: the whole-pool model beats iteration 0 by {gain}; with one repetition "
            "the training noise is unknown (run more repetitions)."
        ]
    noise = f"the training noise (iteration-0 Dice std over repetitions) is {h.noise:.3f}"
    if h.clear:
        ratio = h.gain.mean / h.noise if h.noise > 0 else math.inf
        return [f"Headroom: the whole-pool model beats iteration 0 by {gain}, {ratio:.1f}x "
                f"{noise}: differences between strategies can show."]  # fmt: skip
    return [
        f"This run cannot show a saving: the whole-pool model beats iteration 0 by only "
        f"{gain}, not clearly more than {noise} (needed: > {NOISE_FACTOR:g}x). Train longer "
        "(train.epochs), use a larger model (model.base_filters) or, if the headroom is real "
        "but small, run more repetitions."
    ]


def _sentence(s: StrategyVerdict, base: StrategyVerdict, v: Verdict) -> str:
    p = s.versus_baseline
    assert p is not None
    reach = (
        f"Added patches to reach {base.name}'s final test Dice ({v.baseline_target:.3f}): "
        f"{s.name} {_effort(s.to_baseline, s.hours_to_baseline)}, {base.name} "
        f"{_effort(base.to_baseline, base.hours_to_baseline)}"
    )
    if v.upper_target is not None:
        reach += (
            f"; to reach {UPPER_FRACTION:.0%} of the whole-pool Dice ({v.upper_target:.3f}): "
            f"{s.name} {_effort(s.to_upper, s.hours_to_upper)}, "
            f"{base.name} {_effort(base.to_upper, base.hours_to_upper)}"
        )
    diff = f"AULC {s.aulc.text()} vs {base.aulc.text()}, paired difference {p.mean:+.3f}"
    if p.n < 2:
        return (
            f"{s.name} vs {base.name}: {diff} from one repetition — with no spread over "
            f"repetitions this run cannot tell a real difference from noise. {reach}."
        )
    diff += f" ± {p.std:.3f} over {p.n} repetitions, p = {p.p:.2g}"
    needed = repetitions_needed(p)
    power = (
        f" About {needed} repetitions would detect a difference of this size "
        f"(paired t-test, power {POWER:.0%})."
        if needed is not None
        else ""
    )
    if not p.clear:
        return (
            f"{s.name} vs {base.name}: the difference is within noise ({diff}); this run "
            f"gives no evidence that {s.name} saves annotation.{power} {reach}."
        )
    word = "learns faster than" if p.mean > 0 else "learns more slowly than"
    return f"{s.name} {word} {base.name} ({diff}). {reach}."


def _effort(patches: Spread, hours: Spread) -> str:
    """``"4.3 ± 2.1 (≈ 3.2 ± 1.1 h)"``, hours left out where not available."""
    text = patches.text(1)
    return f"{text} (≈ {Spread(tuple(hours.known)).text(1)} h)" if len(hours.known) else text


def compute_verdict(run: Run, minutes: dict[int, float] | None) -> Verdict | None:
    """The verdict over the repetitions and iterations every strategy has completed;
    ``minutes``: annotation minutes per training patch id (``None``: no hours)."""
    reps, done = run.common()
    if done == 0:
        return None
    n0 = len(run.split["initial"])
    strategy_curves = []
    for name, table in run.table("test_dice").items():
        added = run.annotated(name, done)[reps] - n0  # unique annotated patches
        if np.all(added == added[:1]):
            added = added[0]
        costs = None
        if minutes is not None:  # each annotated patch once, in the order first labelled
            lists = [dict.fromkeys(run.of(name, rep)[done - 1]["labelled"][n0:]) for rep in reps]
            costs = [[minutes[p] for p in ids] for ids in lists]
        strategy_curves.append(StrategyCurves(name, added, table[reps, :done], costs))
    upper = [float(r["test_dice"]) for r in run.upper_bound if r["repetition"] in reps]
    return verdict(strategy_curves, upper)
