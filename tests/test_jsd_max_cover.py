"""The baselines of Nath et al.: ``jsd`` (Kuo et al. 2018) and ``max_cover`` (Yang et al.
2017), from hand-made statistics, through the loop and from a U-Net learner."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from activeseg.acquisition import MaxCoverStrategy, PoolScores, get_strategy, strategies_of
from activeseg.config import ScoringConfig, with_overrides
from activeseg.errors import UserError
from activeseg.loop import LoopState, run
from activeseg.presets import preset
from activeseg.runtime import numpy_generator
from activeseg.scoring import McStats, Moments, class_probabilities, entropy
from activeseg.validation import validate


def _stats(members: torch.Tensor) -> McStats:
    """Statistics of member probabilities ``[T, B, C, *S]``."""
    moments = Moments()
    moments.add(members)
    return moments.stats()


def _jsd(members: torch.Tensor) -> np.ndarray:
    return get_strategy("jsd").score(_stats(members), members.shape[1], numpy_generator(0)).scores


def test_jsd_is_zero_for_identical_members() -> None:
    p = torch.rand(1, 2, 3, 4, 4).softmax(dim=2)
    assert np.abs(_jsd(p.expand(5, -1, -1, -1, -1))).max() < 1e-6
    sigmoid = torch.rand(1, 2, 1, 4, 4)
    assert np.abs(_jsd(sigmoid.expand(3, -1, -1, -1, -1))).max() < 1e-6


def test_jsd_equals_the_hand_computed_divergence() -> None:
    # Two sigmoid members 0.9 and 0.1 at one pixel: H(0.5) - (H(0.9) + H(0.1)) / 2.
    h = lambda q: -sum(x * math.log(x) for x in q if x > 0)  # noqa: E731
    members = torch.tensor([0.9, 0.1]).reshape(2, 1, 1, 1, 1)
    expected = h([0.5, 0.5]) - (h([0.9, 0.1]) + h([0.1, 0.9])) / 2
    assert _jsd(members)[0] == pytest.approx(expected, rel=1e-6)
    # Three-class members, two pixels; the score is the mean over pixels.
    a, b = [0.7, 0.2, 0.1], [0.1, 0.2, 0.7]
    pix0 = h([0.4, 0.2, 0.4]) - (h(a) + h(b)) / 2
    members = torch.tensor([[a, a], [b, a]]).permute(0, 2, 1).reshape(2, 1, 3, 1, 2)
    assert _jsd(members)[0] == pytest.approx(pix0 / 2, rel=1e-6)
    # and the generalised JSD of the members equals it by definition
    q = class_probabilities(members[:, 0])
    direct = entropy(q.mean(0, keepdim=True))[0] - entropy(q).mean(0)
    assert _jsd(members)[0] == pytest.approx(float(direct.mean()), rel=1e-5)


def _pool() -> tuple[np.ndarray, np.ndarray]:
    """6 pool patches: descriptors in two directions, uncertainty highest in cluster A."""
    features = np.array([[1, 0], [1, 0.05], [1, 0.1], [1, -0.05], [0, 1], [0.05, 1]], float)
    uncertainty = np.array([0.9, 0.8, 0.7, 0.1, 0.6, 0.2])
    return features, uncertainty


def test_max_cover_scores_uncertainty_per_chunk_and_ranks_by_cover() -> None:
    std = torch.zeros(2, 1, 2, 2)
    std[0] = 0.3
    stats = McStats(torch.full((2, 1, 2, 2), 0.5), std, 4)
    strategy = get_strategy("max_cover", ScoringConfig(cover_candidates=4))
    assert isinstance(strategy, MaxCoverStrategy) and strategy.candidates == 4
    np.testing.assert_allclose(strategy.score(stats, 2, numpy_generator(0)).scores, [0.3, 0])
    features, uncertainty = _pool()
    pool = PoolScores(np.arange(6), uncertainty, np.empty(0, np.int64), None, features)
    ranking = strategy.finalize(pool)
    top2 = set(np.argsort(-ranking)[:2].tolist())
    assert 4 in top2 and len(top2 & {0, 1, 2}) == 1  # one patch of each cluster
    with pytest.raises(ValueError, match="needs the pool's features"):
        strategy.finalize(PoolScores(np.arange(6), uncertainty, np.empty(0, np.int64)))


class CoverLearner:
    """A learner whose pool statistics and features are :func:`_pool`'s."""

    def __init__(self) -> None:
        self.features_calls = 0
        self.features_of, self.uncertainty = _pool()

    def fit(self, ids: np.ndarray, masks: np.ndarray, seed: int) -> dict[str, Any]:
        return {}

    def evaluate(self) -> dict[str, Any]:
        return {}

    def statistics(self, ids: np.ndarray, seed: int) -> McStats:
        std = torch.from_numpy(self.uncertainty[ids]).float().reshape(-1, 1, 1, 1)
        return McStats(torch.full_like(std, 0.5), std, 2)

    def features(self, ids: np.ndarray) -> np.ndarray:
        self.features_calls += 1
        return self.features_of[ids]


class Oracle:
    def reveal(self, ids: np.ndarray) -> np.ndarray:
        return np.zeros((len(ids), 1, 1, 1), np.uint8)


def test_the_loop_hands_features_to_max_cover_and_selects_a_covering_batch() -> None:
    learner = CoverLearner()
    state = LoopState([10], list(range(6)))
    run(
        learner,
        Oracle(),
        get_strategy("max_cover", ScoringConfig(cover_candidates=4)),
        state,
        1,
        2,
        seed=0,
    )
    assert learner.features_calls == 1
    picked = set(state.labelled[1:])
    assert 4 in picked and len(picked & {0, 1, 2}) == 1
    plain = LoopState([10], list(range(6)))
    run(CoverLearner(), Oracle(), get_strategy("std_mean"), plain, 1, 2, seed=0)
    assert set(plain.labelled[1:]) == {0, 1}  # uncertainty alone picks one cluster


def test_max_cover_needs_at_least_k_candidates() -> None:
    config = with_overrides(
        preset("demo"),
        {
            "loop.strategies": "random,max_cover",
            "loop.query_size": 2,
            "scoring.cover_candidates": 1,
        },
    )
    validate(config)  # each setting is valid on its own
    with pytest.raises(UserError, match="cover_candidates \\(1\\) must be >= loop.query_size"):
        strategies_of(config)
