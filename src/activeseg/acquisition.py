"""Acquisition strategies: a per-pixel map and one score per pool patch; top-k selection.

A strategy is a small object with a ``name``, a flag ``needs_mc`` (whether it reads MC
statistics) and ``score(stats, n, rng) -> Scores``. Strategies register by name
(:data:`STRATEGIES`, :func:`get_strategy`); the loop only knows this protocol.

Chunking contract: the loop scores the pool in chunks. A strategy with ``needs_mc`` is called
once per chunk and must score each patch from that patch's statistics alone, without drawing
from ``rng`` (so scores do not depend on the chunking and the selection's tie-break stream is
the same for every strategy); a strategy without MC statistics is called once with the
whole pool size ``n`` and may draw from ``rng``.

``std_edt`` weights the std map by a Euclidean distance transform of the thresholded mean
prediction so that pixels at predicted class borders — where uncertainty is inherent —
weigh least. Two distances are offered (``ScoringConfig.edt``):

* ``border`` (default): the distance of every pixel to the nearest border of the predicted
  mask, measured on both sides (``edt(pred) + edt(~pred)``; 1 next to the border). It follows
  the paper's stated intent — down-weight borders, keep confident-looking but uncertain
  regions — for myelin and background alike. A patch whose prediction has no border gets the
  patch diagonal everywhere (the largest distance a border inside the patch could have).
* ``foreground``: the paper's text, the distance inside the predicted myelin only; the
  background (and so uncertainty about missed myelin) weighs zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from scipy import ndimage

from activeseg.errors import UserError
from activeseg.scoring import McStats

EDT_MODES = ("border", "foreground")


@dataclass(frozen=True)
class Scores:
    """``scores`` float64 ``[N]`` (higher = more informative); ``maps`` float32 ``[N, H, W]``
    (the per-pixel map the score reduces), or ``None`` for strategies without one."""

    scores: np.ndarray
    maps: torch.Tensor | None = None


class Strategy(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def needs_mc(self) -> bool:
        """Whether :meth:`score` reads MC statistics (else it receives ``None``)."""
        ...

    def score(self, stats: McStats | None, n: int, rng: np.random.Generator) -> Scores: ...


@dataclass(frozen=True)
class RandomStrategy:
    """Uniformly random scores: top-k of them is a uniformly random choice."""

    name: str = "random"
    needs_mc: bool = False

    def score(self, stats: McStats | None, n: int, rng: np.random.Generator) -> Scores:
        return Scores(rng.random(n))


@dataclass(frozen=True)
class StdStrategy:
    """The std map (optionally EDT-weighted), reduced per patch by ``sum`` or ``mean``.

    ``std_sum`` is the paper's "overall uncertainty"; ``std_edt`` its border-weighted variant.
    """

    name: str
    edt: str | None = None  # None, "border" or "foreground"
    reduction: str = "sum"
    threshold: float = 0.5
    needs_mc: bool = True

    def score(self, stats: McStats | None, n: int, rng: np.random.Generator) -> Scores:
        if stats is None:
            raise ValueError(f"strategy {self.name} needs MC statistics")
        maps = std_map(stats)
        if self.edt is not None:
            maps = maps * edt_weight(stats.mean[:, 0] >= self.threshold, self.edt)
        return Scores(reduce_maps(maps, self.reduction), maps)


def std_map(stats: McStats) -> torch.Tensor:
    """Per-pixel std ``[N, H, W]``: the foreground channel's for one channel, else the mean
    over channels."""
    return stats.std[:, 0] if stats.std.shape[1] == 1 else stats.std.mean(1)


def reduce_maps(maps: torch.Tensor, reduction: str) -> np.ndarray:
    """``[N, H, W]`` -> ``[N]`` float64 by ``sum`` or ``mean`` over pixels."""
    flat = maps.reshape(len(maps), -1).double()
    if reduction == "sum":
        return flat.sum(1).numpy()
    if reduction == "mean":
        return flat.mean(1).numpy()
    raise ValueError(f"unknown reduction {reduction!r} (sum, mean)")


def edt_weight(pred: torch.Tensor, mode: str) -> torch.Tensor:
    """Distance weights ``[N, H, W]`` float32 (pixels) of binary predictions ``[N, H, W]``.

    ``border``: distance to the nearest pixel of the other class (>= 1; the patch diagonal
    where the prediction has one class only). ``foreground``: distance inside the predicted
    foreground to the nearest background pixel (0 on background).
    """
    if mode not in EDT_MODES:
        raise UserError(f"scoring.edt: {mode!r} is not one of {', '.join(EDT_MODES)}")
    masks = pred.cpu().numpy().astype(bool)
    out = np.empty(masks.shape, dtype=np.float32)
    diagonal = float(np.hypot(*masks.shape[1:]))
    for i, m in enumerate(masks):
        if m.all() or (mode == "border" and not m.any()):
            out[i] = diagonal  # no border inside the patch
        elif mode == "foreground":
            out[i] = ndimage.distance_transform_edt(m)
        else:
            out[i] = ndimage.distance_transform_edt(m) + ndimage.distance_transform_edt(~m)
    return torch.from_numpy(out)


def select_top_k(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of the ``k`` highest scores, best first; ties are broken by a random order
    drawn from ``rng`` (so equal scores do not favour low positions)."""
    if k < 1:
        raise UserError(f"query size k must be >= 1, got {k}")
    if k > len(scores):
        raise UserError(f"cannot select {k} patches from a pool of {len(scores)}; lower k")
    tiebreak = rng.permutation(len(scores))
    order = np.lexsort((tiebreak, -np.asarray(scores, dtype=np.float64)))
    return order[:k]


def get_strategy(name: str, edt: str = "border", threshold: float = 0.5) -> Strategy:
    """The strategy registered under ``name`` (see :data:`STRATEGIES`)."""
    if name not in STRATEGIES:
        raise UserError(f"unknown strategy {name!r}; choose from: {', '.join(STRATEGIES)}")
    return STRATEGIES[name](edt, threshold)


STRATEGIES: dict[str, Callable[[str, float], Strategy]] = {
    "random": lambda edt, thr: RandomStrategy(),
    "std_sum": lambda edt, thr: StdStrategy("std_sum", threshold=thr),
    "std_mean": lambda edt, thr: StdStrategy("std_mean", reduction="mean", threshold=thr),
    "std_edt": lambda edt, thr: StdStrategy("std_edt", edt=edt, threshold=thr),
}
