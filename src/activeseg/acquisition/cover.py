"""Representative selection by greedy maximum cover (Yang et al. 2017, "Suggestive
annotation: a deep active learning framework for biomedical image segmentation").

Among candidate patches (the most uncertain ones), choose a set ``S`` that best represents
the unlabelled pool ``U``: maximise ``F(S) = sum_{x in U} max_{s in S} sim(s, x)`` with
``sim`` the cosine similarity of image descriptors (here the U-Net bottleneck averaged over
space). ``F`` is monotone submodular, so the greedy choice reaches at least ``1 - 1/e`` of
the optimum. Similarities below 0 count as 0 (the cover of an empty set), so an item is
never covered "negatively".
"""

from __future__ import annotations

import numpy as np


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[A, B]`` cosine similarities of the rows of ``a`` ``[A, F]`` and ``b`` ``[B, F]``
    (float64; a zero row has similarity 0 to everything)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)

    def unit(x: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)

    return unit(a) @ unit(b).T


def greedy_max_cover(similarity: np.ndarray, k: int) -> np.ndarray:
    """Rows (candidates) of ``similarity`` ``[K, N]`` (candidate x pool item) chosen greedily
    to maximise the cover ``sum_n max_{chosen c} max(sim[c, n], 0)``, in the order chosen,
    ``[min(k, K)]``. Each step adds the candidate of the largest gain; ties go to the lower
    row (order candidates by uncertainty, most uncertain first)."""
    sim = np.maximum(np.asarray(similarity, dtype=np.float64), 0.0)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be [K, N], got shape {sim.shape}")
    cover = np.zeros(sim.shape[1])
    chosen: list[int] = []
    available = np.ones(sim.shape[0], dtype=bool)
    for _ in range(min(k, sim.shape[0])):
        gains = np.maximum(sim, cover).sum(axis=1) - cover.sum()
        gains[~available] = -np.inf
        best = int(np.argmax(gains))
        chosen.append(best)
        available[best] = False
        cover = np.maximum(cover, sim[best])
    return np.asarray(chosen, dtype=np.int64)


def cover_ranking(uncertainty: np.ndarray, features: np.ndarray, candidates: int) -> np.ndarray:
    """Ranking scores ``[N]`` of Yang et al.'s two steps for pool items with ``uncertainty``
    ``[N]`` and descriptors ``features`` ``[N, F]``: the ``candidates`` most uncertain items
    (ties: lower position first), ordered by greedy maximum cover of the whole pool, get
    scores ``K, K - 1, ..., 1`` (K = number of candidates); every other item 0. The top k of
    these scores are the greedy cover's first k choices, for any k <= K."""
    uncertainty = np.asarray(uncertainty, dtype=np.float64)
    if len(features) != len(uncertainty):
        raise ValueError(f"{len(features)} descriptors for {len(uncertainty)} pool items")
    order = np.argsort(-uncertainty, kind="stable")[: max(0, candidates)]
    picked = order[greedy_max_cover(cosine_similarity(features[order], features), len(order))]
    scores = np.zeros(len(uncertainty))
    scores[picked] = np.arange(len(picked), 0, -1, dtype=np.float64)
    return scores
