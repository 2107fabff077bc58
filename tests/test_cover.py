"""Greedy maximum cover (Yang et al. 2017) on hand-made similarities and descriptors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from activeseg.acquisition.cover import cosine_similarity, cover_ranking, greedy_max_cover

# 3 candidates x 6 pool items in two clusters {0, 1, 2} and {3, 4, 5}.
SIM = np.array(
    [
        [1.0, 0.95, 0.95, 0.0, 0.0, 0.0],  # covers cluster A: 2.9
        [0.9, 1.0, 0.95, 0.1, 0.0, 0.0],  # covers cluster A: 2.95
        [0.0, 0.0, 0.1, 1.0, 0.85, 0.85],  # covers cluster B: 2.8 (the lowest sum)
    ]
)


def _cover(sim: np.ndarray, rows: tuple[int, ...]) -> float:
    return float(np.maximum(sim[list(rows)], 0).max(axis=0).sum())


def test_greedy_max_cover_picks_a_covering_set_on_a_hand_made_matrix() -> None:
    # Step 1: row 1 (gain 2.95). Step 2: row 0 adds 0.1 (item 0: 0.9 -> 1.0),
    # row 2 adds 2.6 (1.0 - 0.1 + 0.85 + 0.85): the set covers both clusters, although
    # row 0 alone covers more than row 2.
    assert greedy_max_cover(SIM, 2).tolist() == [1, 2]
    assert greedy_max_cover(SIM, 3).tolist() == [1, 2, 0]
    assert greedy_max_cover(SIM, 5).tolist() == [1, 2, 0]  # at most K rows


def test_greedy_max_cover_reaches_the_optimum_on_small_random_matrices() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        sim = rng.uniform(-0.2, 1, (5, 8))
        chosen = tuple(greedy_max_cover(sim, 2).tolist())
        best = max(_cover(sim, c) for c in itertools.combinations(range(5), 2))
        assert _cover(sim, chosen) >= (1 - 1 / np.e) * best
        assert chosen[0] == int(np.argmax(np.maximum(sim, 0).sum(1)))


def test_negative_similarities_count_as_uncovered() -> None:
    sim = np.array([[-1.0, -1.0, 0.5], [0.2, 0.0, 0.0]])
    assert greedy_max_cover(sim, 1).tolist() == [0]  # 0.5 > 0.2, negatives ignored


def test_cosine_similarity_values() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    sim = cosine_similarity(a, a)
    np.testing.assert_allclose(sim[0], [1, 1 / np.sqrt(2), 0])
    np.testing.assert_allclose(np.diag(sim)[:2], [1, 1])
    assert sim[2, 2] == 0


def test_cover_ranking_filters_by_uncertainty_then_covers_the_pool() -> None:
    # Pool items 0-3 in direction (1, 0), items 4-5 in direction (0, 1).
    features = np.array([[1, 0], [1, 0.05], [1, 0.1], [1, -0.05], [0, 1], [0.05, 1]])
    uncertainty = np.array([0.9, 0.8, 0.7, 0.1, 0.6, 0.2])
    scores = cover_ranking(uncertainty, features, candidates=4)
    # candidates: 0, 1, 2, 4 (top-4 uncertain); item 3 and 5 are not candidates
    assert scores[3] == scores[5] == 0
    top2 = np.argsort(-scores)[:2]
    assert 4 in top2 and len({0, 1, 2} & set(top2.tolist())) == 1
    # plain top-2 uncertainty would take two items of the same cluster
    assert set(np.argsort(-uncertainty)[:2].tolist()) == {0, 1}
    assert sorted(scores[scores > 0].tolist()) == [1, 2, 3, 4]


def test_cover_ranking_needs_one_descriptor_per_item() -> None:
    with pytest.raises(ValueError, match="3 descriptors for 2"):
        cover_ranking(np.zeros(2), np.zeros((3, 4)), 2)
