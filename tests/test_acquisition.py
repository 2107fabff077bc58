"""Acquisition: EDT weights on hand-made masks, the std_edt ranking on hand-made statistics,
top-k selection and its tie-breaking, the registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from activeseg.acquisition import (
    BUILT_IN,
    MapStrategy,
    NathStrategy,
    PoolScores,
    RandomStrategy,
    edt_weight,
    get_selection,
    get_strategy,
    reduce_maps,
    select_stochastic_batch,
    select_top_k,
    std_map,
)
from activeseg.config import ScoringConfig
from activeseg.errors import UserError
from activeseg.scoring import McStats, Moments

# --------------------------------------------------------------------------- EDT weights


def left_columns(width: int = 7, height: int = 7, fg_cols: int = 3) -> torch.Tensor:
    """``[1, H, W]`` mask: foreground in the first ``fg_cols`` columns."""
    mask = torch.zeros(1, height, width, dtype=torch.bool)
    mask[:, :, :fg_cols] = True
    return mask


def test_border_weight_is_one_next_to_the_border_and_grows_away_from_it() -> None:
    """Columns 0-2 foreground, 3-6 background: distance to the other class per column."""
    weights = edt_weight(left_columns(), "border")
    expected = torch.tensor([3.0, 2.0, 1.0, 1.0, 2.0, 3.0, 4.0]).expand(1, 7, 7)
    assert weights.dtype == torch.float32
    assert torch.equal(weights, expected)


def test_foreground_weight_is_zero_on_background() -> None:
    weights = edt_weight(left_columns(), "foreground")
    expected = torch.tensor([3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0]).expand(1, 7, 7)
    assert torch.equal(weights, expected)


def test_border_weight_around_a_single_pixel_is_euclidean() -> None:
    mask = torch.zeros(1, 5, 5, dtype=torch.bool)
    mask[0, 2, 2] = True
    weights = edt_weight(mask, "border")[0]
    assert weights[2, 2] == 1.0
    assert weights[2, 3] == 1.0 and weights[1, 2] == 1.0
    assert weights[1, 1] == pytest.approx(math.sqrt(2))
    assert weights[0, 0] == pytest.approx(math.sqrt(8))
    assert weights[0, 2] == 2.0


@pytest.mark.parametrize("fill", [False, True])
def test_patch_without_border_gets_the_diagonal(fill: bool) -> None:
    mask = torch.full((1, 6, 8), fill, dtype=torch.bool)
    assert torch.equal(edt_weight(mask, "border"), torch.full((1, 6, 8), 10.0))


def test_foreground_mode_without_border() -> None:
    empty = torch.zeros(1, 6, 8, dtype=torch.bool)
    full = torch.ones(1, 6, 8, dtype=torch.bool)
    assert torch.equal(edt_weight(empty, "foreground"), torch.zeros(1, 6, 8))
    assert torch.equal(edt_weight(full, "foreground"), torch.full((1, 6, 8), 10.0))


def test_edt_weight_treats_each_patch_alone() -> None:
    masks = torch.cat([left_columns(), torch.zeros(1, 7, 7, dtype=torch.bool)])
    weights = edt_weight(masks, "border")
    assert torch.equal(weights[0], edt_weight(left_columns(), "border")[0])
    assert torch.equal(weights[1], torch.full((7, 7), math.hypot(7, 7), dtype=torch.float32))


def test_unknown_edt_mode_is_a_user_error() -> None:
    with pytest.raises(UserError, match="scoring.edt: 'inside' is not one of border, foreground"):
        edt_weight(left_columns(), "inside")


# --------------------------------------------------------------------------- std strategies


def border_vs_blob_stats() -> McStats:
    """Two 16x16 patches with the same mean prediction (myelin in columns 0-7).

    A: std 0.2 on the two columns along the predicted border (7 and 8): inherent
    uncertainty. B: std 0.2 on an 8x4 blob in the predicted background, 4-7 pixels from the
    border: a confident-looking region the model is unsure of. Both std sums are 32 x 0.2.
    """
    mean = torch.full((2, 1, 16, 16), 0.1)
    mean[:, :, :, :8] = 0.9
    std = torch.zeros(2, 1, 16, 16)
    std[0, 0, :, 7:9] = 0.2
    std[1, 0, 4:12, 12:16] = 0.2
    return McStats(mean, std, samples=10)


def test_std_sum_ties_where_std_edt_prefers_the_blob_away_from_borders() -> None:
    stats = border_vs_blob_stats()
    rng = np.random.default_rng(0)
    plain = get_strategy("std_sum").score(stats, 2, rng)
    weighted = get_strategy("std_edt", ScoringConfig(edt="border")).score(stats, 2, rng)
    assert plain.scores[0] == plain.scores[1] == pytest.approx(6.4)
    # A: 32 pixels of weight 1; B: 8 rows x 0.2 x (5 + 6 + 7 + 8).
    np.testing.assert_allclose(weighted.scores, [6.4, 41.6], rtol=1e-6)
    assert select_top_k(weighted.scores, 2, rng).tolist() == [1, 0]


def test_foreground_edt_ignores_uncertainty_on_predicted_background() -> None:
    stats = border_vs_blob_stats()
    scores = get_strategy("std_edt", ScoringConfig(edt="foreground")).score(
        stats, 2, np.random.default_rng(0)
    )
    np.testing.assert_allclose(scores.scores, [16 * 0.2 * 1.0, 0.0], rtol=1e-6)


def test_std_edt_thresholds_the_mean_at_the_configured_threshold() -> None:
    stats = border_vs_blob_stats()
    strict = get_strategy(
        "std_edt", ScoringConfig(edt="border", threshold=0.95)
    )  # nothing is foreground
    scores = strict.score(stats, 2, np.random.default_rng(0))
    np.testing.assert_allclose(scores.scores, [6.4 * math.hypot(16, 16)] * 2, rtol=1e-6)


def test_std_strategies_return_their_maps() -> None:
    stats = border_vs_blob_stats()
    rng = np.random.default_rng(0)
    plain = get_strategy("std_sum").score(stats, 2, rng)
    weighted = get_strategy("std_edt").score(stats, 2, rng)
    assert plain.maps is not None and weighted.maps is not None
    assert torch.equal(plain.maps, stats.std[:, 0])
    assert weighted.maps.shape == (2, 16, 16)
    assert plain.scores.dtype == np.float64


def test_std_mean_is_std_sum_over_the_pixel_count() -> None:
    stats = border_vs_blob_stats()
    rng = np.random.default_rng(0)
    total = get_strategy("std_sum").score(stats, 2, rng).scores
    mean = get_strategy("std_mean").score(stats, 2, rng).scores
    np.testing.assert_allclose(mean, total / 256)


def test_std_map_averages_channels_of_a_softmax_model() -> None:
    std = torch.zeros(1, 2, 2, 2)
    std[0, 0] = 1.0
    std[0, 1] = 3.0
    stats = McStats(torch.full_like(std, 0.5), std, samples=2)
    assert torch.equal(std_map(stats), torch.full((1, 2, 2), 2.0))


def test_reduce_maps_rejects_unknown_reduction() -> None:
    with pytest.raises(ValueError, match="unknown reduction 'max'"):
        reduce_maps(torch.zeros(1, 2, 2), "max")


def test_std_strategy_without_statistics_raises() -> None:
    with pytest.raises(ValueError, match="std_sum needs MC statistics"):
        MapStrategy("std_sum").score(None, 3, np.random.default_rng(0))


# --------------------------------------------------------------------------- selection


def test_select_top_k_returns_highest_first() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    assert select_top_k(scores, 3, np.random.default_rng(0)).tolist() == [1, 3, 2]


def test_ties_are_broken_by_the_rng_never_above_a_higher_score() -> None:
    scores = np.array([1.0, 5.0, 2.0, 5.0, 5.0, 0.0])
    picks = set()
    for seed in range(30):
        chosen = select_top_k(scores, 2, np.random.default_rng(seed))
        assert set(chosen.tolist()) <= {1, 3, 4}
        picks.add(tuple(chosen.tolist()))
        everything = select_top_k(scores, 6, np.random.default_rng(seed))
        assert np.all(np.diff(scores[everything]) <= 0)
    assert len(picks) > 1  # different seeds pick different tied patches


def test_select_top_k_is_reproducible_for_one_rng_seed() -> None:
    scores = np.zeros(20)
    a = select_top_k(scores, 5, np.random.default_rng(4))
    b = select_top_k(scores, 5, np.random.default_rng(4))
    assert a.tolist() == b.tolist()


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.integers(0, 4), min_size=1, max_size=25).map(np.array),
    k_fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_selection_is_the_top_k_in_order(scores: np.ndarray, k_fraction: float, seed: int) -> None:
    k = max(1, round(k_fraction * len(scores)))
    chosen = select_top_k(scores, k, np.random.default_rng(seed))
    assert len(chosen) == len(set(chosen.tolist())) == k
    assert np.all(np.diff(scores[chosen]) <= 0)
    rest = np.delete(scores, chosen)
    assert len(rest) == 0 or scores[chosen].min() >= rest.max()


@pytest.mark.parametrize("k", [0, -1])
def test_non_positive_k_is_a_user_error(k: int) -> None:
    with pytest.raises(UserError, match="query size k must be >= 1"):
        select_top_k(np.ones(3), k, np.random.default_rng(0))


def test_k_above_the_pool_is_a_user_error() -> None:
    with pytest.raises(UserError, match="cannot select 4 patches from a pool of 3"):
        select_top_k(np.ones(3), 4, np.random.default_rng(0))


def test_random_strategy_is_reproducible_from_a_seeded_rng() -> None:
    strategy = get_strategy("random")
    a = strategy.score(None, 10, np.random.default_rng(1)).scores
    b = strategy.score(None, 10, np.random.default_rng(1)).scores
    c = strategy.score(None, 10, np.random.default_rng(2)).scores
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert strategy.score(None, 10, np.random.default_rng(1)).maps is None


def test_random_selection_covers_the_pool() -> None:
    strategy = RandomStrategy()
    firsts = set()
    for seed in range(60):
        rng = np.random.default_rng(seed)
        firsts.add(int(select_top_k(strategy.score(None, 5, rng).scores, 1, rng)[0]))
    assert firsts == set(range(5))


# --------------------------------------------------------------------------- registry


def test_registry_names_and_needs() -> None:
    assert {"random", "std_sum", "std_mean", "var_sum", "std_edt", "entropy", "bald"} <= set(
        BUILT_IN
    )
    for name in BUILT_IN:
        strategy = get_strategy(name)
        assert strategy.name == name
        assert strategy.needs_mc is (name != "random")


def test_get_strategy_passes_edt_mode_and_threshold() -> None:
    strategy = get_strategy("std_edt", ScoringConfig(edt="foreground", threshold=0.3))
    assert isinstance(strategy, MapStrategy)
    assert (strategy.edt, strategy.threshold, strategy.reduction) == ("foreground", 0.3, "sum")


def test_unknown_strategy_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown strategy 'bold'; choose from: random"):
        get_strategy("bold")


# --------------------------------------------------------------------------- entropy, BALD, var


def samples_stats(samples: list[torch.Tensor]) -> McStats:
    """Statistics of per-sample probabilities ``[B, 1, H, W]`` each, through the engine's
    :class:`Moments`."""
    moments = Moments()
    for p in samples:
        moments.add(p[None])
    return moments.stats()


def disagreement_vs_aleatoric() -> McStats:
    """Two 4x4 patches with the same mean 0.5 everywhere. A: half the samples say 0, half say
    1 (the model does not know: epistemic). B: every sample says 0.5 (the model knows the
    pixel is ambiguous: aleatoric). C: every sample says 0.9 (confident)."""
    a = [torch.zeros(1, 4, 4), torch.ones(1, 4, 4)] * 2
    b = [torch.full((1, 4, 4), 0.5)] * 4
    c = [torch.full((1, 4, 4), 0.9)] * 4
    return samples_stats([torch.stack([x, y, z]) for x, y, z in zip(a, b, c, strict=True)])


def test_entropy_ranks_by_the_mean_prediction_only() -> None:
    stats = disagreement_vs_aleatoric()
    result = get_strategy("entropy").score(stats, 3, np.random.default_rng(0))
    h09 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    np.testing.assert_allclose(result.scores, [math.log(2), math.log(2), h09], rtol=1e-6)
    assert result.maps is not None and result.maps.shape == (3, 4, 4)


def test_bald_prefers_disagreement_and_is_zero_for_identical_samples() -> None:
    stats = disagreement_vs_aleatoric()
    rng = np.random.default_rng(0)
    result = get_strategy("bald").score(stats, 3, rng)
    np.testing.assert_allclose(result.scores, [math.log(2), 0.0, 0.0], atol=1e-7)
    assert select_top_k(result.scores, 1, rng).tolist() == [0]


def test_bald_without_streamed_entropies_says_so() -> None:
    stats = McStats(torch.full((1, 1, 2, 2), 0.5), torch.zeros(1, 1, 2, 2), samples=2)
    with pytest.raises(ValueError, match="bald needs the streamed per-sample entropies"):
        get_strategy("bald").score(stats, 1, np.random.default_rng(0))


def test_var_sum_and_std_sum_rank_one_strong_pixel_against_many_weak_ones() -> None:
    """A: one pixel of std 0.5; B: four pixels of std 0.2. std_sum 0.5 < 0.8 prefers B;
    var_sum 0.25 > 0.16 prefers A."""
    std = torch.zeros(2, 1, 4, 4)
    std[0, 0, 0, 0] = 0.5
    std[1, 0, 0, :] = 0.2
    stats = McStats(torch.full_like(std, 0.5), std, samples=4)
    rng = np.random.default_rng(0)
    std_sum = get_strategy("std_sum").score(stats, 2, rng).scores
    var_sum = get_strategy("var_sum").score(stats, 2, rng).scores
    np.testing.assert_allclose(std_sum, [0.5, 0.8], rtol=1e-6)
    np.testing.assert_allclose(var_sum, [0.25, 0.16], rtol=1e-6)
    assert select_top_k(std_sum, 1, rng).tolist() == [1]
    assert select_top_k(var_sum, 1, rng).tolist() == [0]


def test_std_family_is_one_class_with_a_reduction() -> None:
    names = ("std_sum", "std_mean", "var_sum", "std_edt", "entropy", "bald")
    strategies = [get_strategy(n) for n in names]
    assert all(type(s) is MapStrategy for s in strategies)
    assert [s.reduction for s in strategies] == ["sum", "mean", "sum", "sum", "mean", "mean"]
    for s in strategies:
        assert s.finalize(
            PoolScores(np.arange(3), np.array([3.0, 1.0, 2.0]), np.arange(0))
        ).tolist() == [3.0, 1.0, 2.0]


# --------------------------------------------------------------------------- stochastic batches


def test_stochastic_batch_takes_the_best_group_of_many() -> None:
    scores = np.array([0.0, 0.0, 0.0, 10.0, 9.0, 0.0])
    chosen = select_stochastic_batch(scores, 2, np.random.default_rng(0), groups=300)
    assert chosen.tolist() == [3, 4]  # best member first


def test_stochastic_batch_with_one_group_is_a_random_group() -> None:
    scores = np.arange(10, dtype=np.float64)
    picks = set()
    for seed in range(20):
        chosen = select_stochastic_batch(scores, 3, np.random.default_rng(seed), groups=1)
        assert len(set(chosen.tolist())) == 3
        assert np.all(np.diff(scores[chosen]) <= 0)
        picks.add(tuple(sorted(chosen.tolist())))
    assert len(picks) > 10  # not always the top group


def test_stochastic_group_score_is_the_mean_of_its_members() -> None:
    """Pairs of [9, 1, 7, 2, 0]: means 5 ({0,1}), 8 ({0,2}), ...; the best mean is {0, 2};
    a max-member rule would tie {0, x}, a sum over three would differ."""
    scores = np.array([9.0, 1.0, 7.0, 2.0, 0.0])
    for seed in range(5):
        chosen = select_stochastic_batch(scores, 2, np.random.default_rng(seed), groups=100)
        assert chosen.tolist() == [0, 2]


def test_selection_registry_and_errors() -> None:
    assert get_selection("top_k") is select_top_k
    rng = np.random.default_rng(0)
    assert len(get_selection("stochastic", 5)(np.ones(4), 2, rng)) == 2
    with pytest.raises(UserError, match="loop.selection: 'best' is not one of top_k, stochastic"):
        get_selection("best")
    with pytest.raises(UserError, match="stochastic_groups must be >= 1"):
        select_stochastic_batch(np.ones(3), 1, rng, groups=0)
    with pytest.raises(UserError, match="cannot select 4 patches from a pool of 3"):
        select_stochastic_batch(np.ones(3), 4, rng)


# --------------------------------------------------------------------------- Nath et al.


def test_svgd_mi_prefers_an_uncertain_patch_unlike_the_labelled_ones() -> None:
    """Pool: A uncertain (mean 0.5) and a copy of the labelled image; B uncertain and of
    unrelated structure; C confident (0.95) and unrelated. H_norm = [1, 1, 0], MI_norm =
    [1, 0, 0] -> scores [0, 1, 0]: B first; entropy alone ties A and B."""
    labelled = torch.zeros(1, 4, 4)
    labelled[:, :, 2:] = 1.0  # left / right halves
    rows = labelled.transpose(1, 2)  # top / bottom halves: independent of left / right
    images = torch.stack([labelled, labelled.clone(), rows, rows.clone()])  # ids 0..3
    mean = torch.tensor([0.5, 0.5, 0.95]).view(3, 1, 1, 1).expand(3, 1, 4, 4).clone()
    stats = McStats(mean, torch.zeros_like(mean), samples=3)
    strategy = get_strategy("svgd_mi")
    assert strategy.committee == "svgd"
    per_patch = strategy.score(stats, 3, np.random.default_rng(0))
    assert per_patch.scores[0] == per_patch.scores[1] > per_patch.scores[2]
    pool = PoolScores(np.array([1, 2, 3]), per_patch.scores, np.array([0]), images)
    np.testing.assert_allclose(strategy.finalize(pool), [0.0, 1.0, 0.0], atol=1e-9)
    weighted = NathStrategy(weight=0.5).finalize(pool)
    np.testing.assert_allclose(weighted, [0.5, 1.0, 0.0], atol=1e-9)


def test_svgd_mi_bins_only_pool_and_labelled_intensities() -> None:
    """Regression: the histogram range came from every patch, so a bright validation or test
    patch (id 4, never scored nor labelled) squeezed the pool's intensities 0 and 1 into one
    bin: MI was 0 for all and the ranking fell back to entropy alone (A = B)."""
    labelled = torch.zeros(1, 4, 4)
    labelled[:, :, 2:] = 1.0
    rows = labelled.transpose(1, 2)
    images = torch.stack([labelled, labelled.clone(), rows, rows.clone()])
    held_out = torch.cat([images, torch.full((1, 1, 4, 4), 100.0)])  # id 4: val / test
    scores = np.array([1.0, 1.0, 0.0])  # entropy ties A and B
    ranked = [
        NathStrategy().finalize(PoolScores(np.array([1, 2, 3]), scores, np.array([0]), x))
        for x in (images, held_out)
    ]
    np.testing.assert_allclose(ranked[1], ranked[0])
    np.testing.assert_allclose(ranked[1], [0.0, 1.0, 0.0], atol=1e-9)


def test_svgd_mi_without_labelled_patches_or_images() -> None:
    strategy = NathStrategy()
    scores = np.array([1.0, 3.0, 2.0])
    alone = PoolScores(np.arange(3), scores, np.arange(0), torch.zeros(3, 1, 2, 2))
    np.testing.assert_allclose(strategy.finalize(alone), [0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="needs the images of the pool"):
        strategy.finalize(PoolScores(np.arange(3), scores, np.arange(1)))


def test_committee_strategies_and_the_at_syntax() -> None:
    assert get_strategy("ensemble").committee == "ensemble"
    assert get_strategy("svgd").committee == "svgd"
    assert get_strategy("bald").committee is None
    combined = get_strategy("bald@ensemble")
    assert (combined.name, combined.committee) == ("bald@ensemble", "ensemble")
    assert get_strategy("random@svgd").needs_mc is False
    with pytest.raises(UserError, match="unknown strategy 'bald@forest'"):
        get_strategy("bald@forest")


@pytest.mark.parametrize("name", ["ensemble", "svgd", "entropy@ensemble", "bald@svgd"])
def test_committee_strategies_rank_committee_statistics_like_their_score(name: str) -> None:
    """Members play MC samples: on the hand-made statistics the committee strategies rank
    exactly as their score does (entropy: A = B > C; BALD: A first)."""
    stats = disagreement_vs_aleatoric()
    rng = np.random.default_rng(0)
    scores = get_strategy(name).score(stats, 3, rng).scores
    base = name.split("@")[0] if "@" in name else "entropy"
    np.testing.assert_array_equal(scores, get_strategy(base).score(stats, 3, rng).scores)
