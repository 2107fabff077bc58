"""A project's status: how much is annotated and what the next round may bring."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from activeseg.annotation.state import Round


@dataclass(frozen=True)
class Status:
    n_images: int
    n_holdout: int
    n_annotated: int  # regions used for training (held-out images excluded)
    n_pending: int
    rounds: tuple[Round, ...]
    up_to_date: bool  # the latest model was trained on every annotated region
    pre_dice: float | None  # mean Dice of pre-annotations vs corrected masks
    gain: float | None  # estimated held-out Dice gain of the next round
    next_k: int


def estimate_gain(curve: Sequence[tuple[int, float]], extra: int, last: int = 4) -> float | None:
    """Estimated held-out Dice gain from ``extra`` more patches, from the learning curve
    ``(n_patches, dice)`` of the trainings so far.

    Fits ``dice = a + b * ln(n)`` by least squares to the latest ``last`` points (small-data
    learning curves are close to linear in log n) and returns ``b * ln((n + extra) / n)`` at
    the latest ``n``, clipped to ``[0, 1 - dice]``; ``None`` with fewer than two distinct n.
    """
    points = list(curve)[-last:]
    ns = np.array([p[0] for p in points], dtype=np.float64)
    if len(np.unique(ns)) < 2:
        return None
    dice = np.array([p[1] for p in points], dtype=np.float64)
    slope = np.polyfit(np.log(ns), dice, 1)[0]
    gain = float(slope * math.log((ns[-1] + extra) / ns[-1]))
    return min(max(gain, 0.0), 1.0 - float(dice[-1]))
