"""Acquisition strategies: a per-pixel map and one score per pool patch.

A strategy is a small object with a ``name``, a flag ``needs_mc`` (whether it reads
statistics), ``committee`` (``None``: the single network scored by MC dropout; else the name
of the committee whose members play the MC samples, see :mod:`activeseg.committee`),
``score(stats, n, rng) -> Scores`` per chunk of the pool and ``finalize(pool) -> scores``
once per pass; optionally ``needs_features`` (the learner's descriptors of the pool reach
``finalize``). Strategies are found by name in :mod:`activeseg.acquisition.registry`; the
loop only knows this protocol.

Chunking contract: the loop scores the pool in chunks. A strategy with ``needs_mc`` is called
once per chunk and must score each patch from that patch's statistics alone, without drawing
from ``rng`` (so scores do not depend on the chunking and the selection's tie-break stream is
the same for every strategy); a strategy without statistics is called once with the whole
pool size ``n`` and may draw from ``rng``. After the last chunk, :meth:`Strategy.finalize`
receives every per-chunk score of the pass together with the pool and labelled ids and the
images (:class:`PoolScores`) and returns the ranking scores: the identity for per-patch
strategies; pool-level terms (``svgd_mi``'s min–max normalisation and its mutual information
with the labelled images) belong there.

Committees: ``<strategy>@<committee>`` (e.g. ``bald@ensemble``, ``random@svgd``,
:class:`OnCommittee`) runs any registered strategy on a committee; ``ensemble`` and ``svgd``
are ``entropy@ensemble`` and ``entropy@svgd`` (the entropy of the committee mean, Nath et
al.'s uncertainty term alone), and ``svgd_mi`` is Nath et al.'s score on the SVGD committee
(:class:`NathStrategy`).

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

from activeseg.acquisition.cover import cover_ranking
from activeseg.acquisition.similarity import min_max, mutual_information, quantise
from activeseg.config import COMMITTEE_KINDS, EDT_MODES
from activeseg.errors import UserError
from activeseg.scoring import McStats, entropy


@dataclass(frozen=True)
class Scores:
    """``scores`` float64 ``[N]`` (higher = more informative); ``maps`` float32 ``[N, *S]``
    (the per-pixel map the score reduces), or ``None`` for strategies without one."""

    scores: np.ndarray
    maps: torch.Tensor | None = None


@dataclass(frozen=True)
class PoolScores:
    """One scoring pass over the pool, for :meth:`Strategy.finalize`: pool ``ids`` ``[N]``,
    their per-chunk ``scores`` ``[N]`` (float64, in the order of ``ids``), the ``labelled``
    ids ``[L]`` (the training set) and ``images`` ``[P, 1, *S]`` of every patch indexed by id
    (normalised; ``None`` when the caller has none); ``features`` ``[N, F]``: the learner's
    descriptors of the pool patches, given to strategies whose optional attribute
    ``needs_features`` is true (else ``None``)."""

    ids: np.ndarray
    scores: np.ndarray
    labelled: np.ndarray
    images: torch.Tensor | None = None
    features: np.ndarray | None = None  # [N, F] descriptors of ``ids``, if needs_features


class Strategy(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def needs_mc(self) -> bool:
        """Whether :meth:`score` reads statistics (else it receives ``None``)."""
        ...

    @property
    def committee(self) -> str | None:
        """``None`` (one U-Net, MC dropout) or a committee kind of :data:`COMMITTEE_KINDS`."""
        ...

    def score(self, stats: McStats | None, n: int, rng: np.random.Generator) -> Scores: ...

    def finalize(self, pool: PoolScores) -> np.ndarray:
        """Ranking scores ``[N]`` (float64) of the whole pass."""
        ...


@dataclass(frozen=True)
class RandomStrategy:
    """Uniformly random scores: top-k of them is a uniformly random choice."""

    name: str = "random"
    needs_mc: bool = False
    committee: str | None = None

    def score(self, stats: McStats | None, n: int, rng: np.random.Generator) -> Scores:
        return Scores(rng.random(n))

    def finalize(self, pool: PoolScores) -> np.ndarray:
        return pool.scores


def std_map(stats: McStats) -> torch.Tensor:
    """Per-pixel std ``[N, *S]``: the foreground channel's for one channel, else the mean
    over channels."""
    return stats.std[:, 0] if stats.std.shape[1] == 1 else stats.std.mean(1)


def var_map(stats: McStats) -> torch.Tensor:
    """Per-pixel variance ``[N, *S]`` (the square of :func:`std_map` per channel, channels
    averaged like it)."""
    var = stats.std.square()
    return var[:, 0] if var.shape[1] == 1 else var.mean(1)


def entropy_map(stats: McStats) -> torch.Tensor:
    """Predictive entropy of the mean probability ``[N, *S]`` (nats; two classes
    ``[1 - p, p]`` for a sigmoid output)."""
    return entropy(stats.mean)


def bald_map(stats: McStats) -> torch.Tensor:
    """BALD mutual information ``[N, *S]``: entropy of the mean minus the mean of the
    per-sample entropies (>= 0 by Jensen; clamped at 0 against rounding)."""
    if stats.expected_entropy is None:
        raise ValueError("bald needs the streamed per-sample entropies (expected_entropy)")
    return (entropy_map(stats) - stats.expected_entropy).clamp_min(0.0)


MAPS: dict[str, Callable[[McStats], torch.Tensor]] = {
    "std": std_map,
    "var": var_map,
    "entropy": entropy_map,
    "bald": bald_map,
}
"""Per-pixel uncertainty maps of statistics, by name (the ``quantity`` of a
:class:`MapStrategy`)."""


@dataclass(frozen=True)
class MapStrategy:
    """A per-pixel map of the statistics (:data:`MAPS`), optionally weighted by the EDT of
    the thresholded mean prediction, reduced per patch by ``sum`` or ``mean``.

    The family covers ``std_sum`` (the paper's "overall uncertainty"), ``std_mean``,
    ``var_sum``, ``std_edt`` (the paper's border-weighted variant), ``entropy`` and ``bald``.
    """

    name: str
    quantity: str = "std"
    edt: str | None = None  # None, "border" or "foreground"
    reduction: str = "sum"
    threshold: float = 0.5
    needs_mc: bool = True
    committee: str | None = None

    def score(self, stats: McStats | None, n: int, rng: np.random.Generator) -> Scores:
        if stats is None:
            raise ValueError(f"strategy {self.name} needs MC statistics")
        maps = MAPS[self.quantity](stats)
        if self.edt is not None:
            maps = maps * edt_weight(foreground(stats.mean, self.threshold), self.edt)
        return Scores(reduce_maps(maps, self.reduction), maps)

    def finalize(self, pool: PoolScores) -> np.ndarray:
        return pool.scores


@dataclass(frozen=True)
class NathStrategy:
    """Nath et al. (2021): ``H_norm - weight * MI_norm``.

    ``H``: the per-pixel entropy of the committee-mean prediction, averaged per patch (the
    map and the per-chunk score). ``MI`` (in :meth:`finalize`): the mean over the labelled
    patches of the mutual information between the patch's and the labelled patch's intensity
    histograms (``bins`` fixed bins over the intensity range of the pool and labelled patches
    only: validation and test images must not steer the selection;
    :mod:`activeseg.similarity`) — high for a patch that looks like what is labelled already.
    Both terms are min–max normalised over the pool. Nath et al. compare whole images; here
    the units are the loop's patches.
    """

    name: str = "svgd_mi"
    weight: float = 1.0
    bins: int = 32
    needs_mc: bool = True
    committee: str | None = "svgd"

    def score(self, stats: McStats | None, n: int, rng: np.random.Generator) -> Scores:
        if stats is None:
            raise ValueError(f"strategy {self.name} needs committee statistics")
        maps = entropy_map(stats)
        return Scores(reduce_maps(maps, "mean"), maps)

    def finalize(self, pool: PoolScores) -> np.ndarray:
        if pool.images is None:
            raise ValueError(f"strategy {self.name} needs the images of the pool")
        if len(pool.labelled) == 0 or len(pool.ids) == 0:
            return min_max(pool.scores)
        pooled, labelled = pool.images[pool.ids], pool.images[np.unique(pool.labelled)]
        lo = min(float(pooled.min()), float(labelled.min()))
        hi = max(float(pooled.max()), float(labelled.max()))
        a, b = (quantise(x, self.bins, lo, hi) for x in (pooled, labelled))
        mi = mutual_information(a, b, self.bins).mean(1)
        return min_max(pool.scores) - self.weight * min_max(mi)


@dataclass(frozen=True)
class MaxCoverStrategy:
    """Yang et al. 2017 ("Suggestive annotation"): the ``candidates`` most uncertain pool
    patches (``uncertainty``, a per-patch map strategy; default the mean MC std, their
    bootstrap variance's counterpart), then greedy maximum cover of the whole pool by cosine
    similarity of the U-Net bottleneck descriptors (:func:`activeseg.cover.cover_ranking`).

    Per chunk it scores like ``uncertainty``; :meth:`finalize` turns the pass into ranking
    scores ``K .. 1`` for the candidates in the cover's greedy order and 0 for the rest, so
    the top k are the cover's first k choices (k <= K).
    """

    name: str = "max_cover"
    candidates: int = 16
    uncertainty: MapStrategy = MapStrategy("std_mean", reduction="mean")
    needs_mc: bool = True
    needs_features: bool = True
    committee: str | None = None

    def score(self, stats: McStats | None, n: int, rng: np.random.Generator) -> Scores:
        return self.uncertainty.score(stats, n, rng)

    def finalize(self, pool: PoolScores) -> np.ndarray:
        if pool.features is None:
            raise ValueError(f"strategy {self.name} needs the pool's features")
        return cover_ranking(pool.scores, pool.features, self.candidates)


def foreground(mean: torch.Tensor, threshold: float) -> torch.Tensor:
    """Predicted foreground ``[N, *S]`` (bool) of mean probabilities ``[N, C, *S]``: channel 0
    above ``threshold`` for a sigmoid output, any class but 0 (background) by arg-max for a
    softmax one."""
    if mean.shape[1] == 1:
        return mean[:, 0] >= threshold
    return mean.argmax(1) != 0


def reduce_maps(maps: torch.Tensor, reduction: str) -> np.ndarray:
    """``[N, *S]`` -> ``[N]`` float64 by ``sum`` or ``mean`` over pixels."""
    flat = maps.reshape(len(maps), -1).double()
    if reduction == "sum":
        return flat.sum(1).numpy()
    if reduction == "mean":
        return flat.mean(1).numpy()
    raise ValueError(f"unknown reduction {reduction!r} (sum, mean)")


def edt_weight(pred: torch.Tensor, mode: str) -> torch.Tensor:
    """Distance weights ``[N, *S]`` float32 (pixels) of binary predictions ``[N, *S]``.

    ``border``: distance to the nearest pixel of the other class (>= 1; the patch diagonal
    where the prediction has one class only). ``foreground``: distance inside the predicted
    foreground to the nearest background pixel (0 on background).
    """
    if mode not in EDT_MODES:
        raise UserError(f"scoring.edt: {mode!r} is not one of {', '.join(EDT_MODES)}")
    masks = pred.cpu().numpy().astype(bool)
    out = np.empty(masks.shape, dtype=np.float32)
    diagonal = float(np.sqrt(np.sum(np.square(masks.shape[1:]))))
    for i, m in enumerate(masks):
        if m.all() or (mode == "border" and not m.any()):
            out[i] = diagonal  # no border inside the patch
        elif mode == "foreground":
            out[i] = ndimage.distance_transform_edt(m)
        else:
            out[i] = ndimage.distance_transform_edt(m) + ndimage.distance_transform_edt(~m)
    return torch.from_numpy(out)


@dataclass(frozen=True)
class OnCommittee:
    """The strategy ``base`` run on the committee ``committee`` (``<base>@<committee>``):
    the same scores, with the committee's members in place of MC samples."""

    base: Strategy
    committee: str

    def __post_init__(self) -> None:
        if self.committee not in COMMITTEE_KINDS:
            raise UserError(
                f"unknown committee {self.committee!r}; one of {', '.join(COMMITTEE_KINDS)}"
            )

    @property
    def name(self) -> str:
        return f"{self.base.name}@{self.committee}"

    @property
    def needs_mc(self) -> bool:
        return self.base.needs_mc

    @property
    def needs_features(self) -> bool:
        return bool(getattr(self.base, "needs_features", False))

    def score(self, stats: McStats | None, n: int, rng: np.random.Generator) -> Scores:
        return self.base.score(stats, n, rng)

    def finalize(self, pool: PoolScores) -> np.ndarray:
        return self.base.finalize(pool)
