"""Batch selection: which pool positions a query takes from the ranking scores."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from activeseg.config import SELECTIONS
from activeseg.errors import UserError

Selection = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
"""``(scores [N], k, rng) -> positions [k]``, best first."""


def _check_k(k: int, n: int) -> None:
    if k < 1:
        raise UserError(f"query size k must be >= 1, got {k}")
    if k > n:
        raise UserError(f"cannot select {k} patches from a pool of {n}; lower k")


def select_top_k(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of the ``k`` highest scores, best first; ties are broken by a random order
    drawn from ``rng`` (so equal scores do not favour low positions)."""
    _check_k(k, len(scores))
    tiebreak = rng.permutation(len(scores))
    order = np.lexsort((tiebreak, -np.asarray(scores, dtype=np.float64)))
    return order[:k]


def select_stochastic_batch(
    scores: np.ndarray, k: int, rng: np.random.Generator, groups: int = 100
) -> np.ndarray:
    """Gaillochet et al. (2023) stochastic batches: draw ``groups`` random groups of ``k``
    distinct positions (groups may overlap), score each group by the mean of its members'
    scores and return the best group (ties: the first drawn), best member first. ``k = 1``
    draws single patches, so it is not top-1."""
    _check_k(k, len(scores))
    if groups < 1:
        raise UserError(f"loop.stochastic_groups must be >= 1, got {groups}")
    scores = np.asarray(scores, dtype=np.float64)
    members = np.argsort(rng.random((groups, len(scores))), axis=1)[:, :k]  # [groups, k]
    best = members[int(np.argmax(scores[members].mean(1)))]
    return best[np.argsort(-scores[best], kind="stable")]


def get_selection(name: str, groups: int = 100) -> Selection:
    """The batch selection ``(scores [N], k, rng) -> positions [k]`` named ``name``
    (``loop.selection``): ``top_k`` or ``stochastic`` (with ``groups`` random groups)."""
    if name == "top_k":
        return select_top_k
    if name == "stochastic":
        return lambda scores, k, rng: select_stochastic_batch(scores, k, rng, groups)
    raise UserError(f"loop.selection: {name!r} is not one of {', '.join(SELECTIONS)}")
