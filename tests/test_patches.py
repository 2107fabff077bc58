"""Patches: resampling, tiling, source-disjoint splits, normalisation."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activeseg.data.patches import (
    Normalizer,
    PatchSet,
    Split,
    resample,
    split_by_source,
    tile,
)
from activeseg.data.sources import Sample
from activeseg.errors import UserError


def make_sample(name: str, h: int, w: int, pixel_size: float | None = 1.0) -> Sample:
    """Image with unique values (row-major arange scaled to [0, 1]); mask = alternate columns."""
    image = (np.arange(h * w, dtype=np.float32) / max(h * w - 1, 1)).reshape(h, w)
    mask = np.zeros((h, w), np.uint8)
    mask[:, ::2] = 1
    return Sample(name, image, mask, pixel_size)


# --------------------------------------------------------------------------- resample

BLOCKS = np.kron(np.array([[1, 0], [0, 1]], np.uint8), np.ones((2, 2), np.uint8))  # 4x4


def test_resample_noop_returns_same_sample() -> None:
    s = make_sample("a", 4, 4, pixel_size=1.0)
    assert resample(s, None) is s
    assert resample(s, 1.0) is s
    s_unknown = make_sample("b", 4, 4, pixel_size=None)
    assert resample(s_unknown, 2.0) is s_unknown


def test_resample_halving_block_checkerboard() -> None:
    s = Sample("a", BLOCKS.astype(np.float32), BLOCKS.copy(), 1.0)
    out = resample(s, 2.0)
    assert out.pixel_size == 2.0 and out.name == "a"
    assert out.image.shape == out.mask.shape == (2, 2)
    assert out.image.dtype == np.float32 and out.mask.dtype == np.uint8
    # Antialiased bilinear at scale 2 is a triangle filter of half-width 2 input pixels: output
    # pixel 0 sits at input coordinate 0.5, input pixels 0, 1, 2 get weights 0.75, 0.75, 0.25
    # (pixel -1 is outside, weights renormalised by 1.75). Per axis, the "same block" share is
    # 1.5/1.75 = 6/7, so the value is (6/7)^2 + (1/7)^2 = 37/49 where the block is 1, else 12/49.
    hi, lo = 37 / 49, 12 / 49
    np.testing.assert_allclose(out.image, [[hi, lo], [lo, hi]], atol=1e-6)
    np.testing.assert_array_equal(out.mask, [[1, 0], [0, 1]])
    np.testing.assert_array_equal(s.mask, BLOCKS)  # input untouched


def test_resample_mask_stays_binary_on_pixel_checkerboard() -> None:
    checker = (np.indices((6, 6)).sum(axis=0) % 2).astype(np.uint8)
    out = resample(Sample("c", checker.astype(np.float32), checker, 1.0), 2.0)
    assert out.mask.shape == (3, 3) and out.mask.dtype == np.uint8
    assert set(np.unique(out.mask)) <= {0, 1}


def test_resample_doubling_mask_is_nearest_neighbour() -> None:
    # Upsampling x2: each output pixel lies 1/4 pixel from its source pixel, whose bilinear
    # weight is 0.75 * 0.75 = 0.5625 > 0.5, so the thresholded mask repeats each pixel 2x2.
    mask = np.array([[1, 0, 0], [0, 1, 1]], np.uint8)
    out = resample(Sample("d", mask.astype(np.float32), mask, 1.0), 0.5)
    assert out.image.shape == (4, 6)
    np.testing.assert_array_equal(out.mask, np.kron(mask, np.ones((2, 2), np.uint8)))


def test_resample_shape_rounds() -> None:
    out = resample(make_sample("e", 5, 7), 1.5)  # 5/1.5 = 3.33 -> 3, 7/1.5 = 4.67 -> 5
    assert out.image.shape == (3, 5)


def test_resample_rejects_bad_pixel_size() -> None:
    with pytest.raises(UserError, match="> 0"):
        resample(make_sample("f", 4, 4), 0.0)


# --------------------------------------------------------------------------- tile


def test_tile_counts_origins_and_contents() -> None:
    # 10x7, P=3: 3x2 tiles, remainders 1 and 1 -> offset (0, 0).
    # 11x8, P=3: 3x2 tiles, remainders 2 and 2 -> offset (1, 1).
    samples = [make_sample("a", 10, 7), make_sample("b", 11, 8)]
    ps = tile(samples, 3)
    assert len(ps) == 12 and ps.patch_size == 3
    assert ps.images.shape == ps.masks.shape == (12, 1, 3, 3)
    assert ps.images.dtype == np.float32 and ps.masks.dtype == np.uint8
    assert ps.source.dtype == ps.origin.dtype == np.int64
    assert ps.names == ("a", "b") and ps.pixel_size == 1.0
    np.testing.assert_array_equal(ps.source, [0] * 6 + [1] * 6)
    expected = [(0, 0), (0, 3), (3, 0), (3, 3), (6, 0), (6, 3)]
    expected += [(1, 1), (1, 4), (4, 1), (4, 4), (7, 1), (7, 4)]
    np.testing.assert_array_equal(ps.origin, expected)
    for i, (r, c) in enumerate(ps.origin):
        s = samples[ps.source[i]]
        np.testing.assert_array_equal(ps.images[i, 0], s.image[r : r + 3, c : c + 3])
        np.testing.assert_array_equal(ps.masks[i, 0], s.mask[r : r + 3, c : c + 3])


def test_tile_small_image_warns_and_all_small_raises() -> None:
    with pytest.warns(UserWarning, match="tiny"):
        ps = tile([make_sample("tiny", 2, 9), make_sample("big", 4, 4)], 3)
    np.testing.assert_array_equal(ps.source, [1])
    assert ps.names == ("tiny", "big")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the error alone, no warning
        with pytest.raises(UserError, match="lower the patch size"):
            tile([make_sample("tiny", 2, 9)], 3)


def test_tile_mixed_pixel_sizes_and_errors() -> None:
    ps = tile([make_sample("a", 3, 3, 1.0), make_sample("b", 3, 3, 2.0)], 3)
    assert ps.pixel_size is None
    with pytest.raises(UserError, match="unique"):
        tile([make_sample("a", 3, 3), make_sample("a", 3, 3)], 3)
    with pytest.raises(UserError, match="no source images"):
        tile([], 3)


def test_patchset_subset() -> None:
    ps = tile([make_sample("a", 6, 6), make_sample("b", 3, 6)], 3)
    sub = ps.subset([4, 1])
    assert len(sub) == 2 and sub.names == ps.names
    np.testing.assert_array_equal(sub.origin, ps.origin[[4, 1]])
    np.testing.assert_array_equal(ps.subset(ps.source == 1).source, [1, 1])


@settings(max_examples=40, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 70), st.integers(1, 70)), min_size=1, max_size=3),
    old=st.sampled_from([0.25, 0.5, 0.7, 1.0, 1.3]),
    new=st.sampled_from([None, 0.3, 0.5, 1.0, 2.0]),
    p=st.integers(1, 16),
    seed=st.integers(0, 2**16),
)
def test_property_resample_then_tile(
    shapes: list[tuple[int, int]], old: float, new: float | None, p: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    samples = [
        Sample(f"s{i}", rng.random((h, w), np.float32), rng.integers(0, 2, (h, w), np.uint8), old)
        for i, (h, w) in enumerate(shapes)
    ]
    resampled = [resample(s, new) for s in samples]
    for s, r in zip(samples, resampled, strict=True):
        if new is not None:
            expected = tuple(max(1, round(n * old / new)) for n in s.image.shape)
            assert r.image.shape == r.mask.shape == expected
        assert np.isfinite(r.image).all() and set(np.unique(r.mask)) <= {0, 1}
    n_expected = sum((r.image.shape[0] // p) * (r.image.shape[1] // p) for r in resampled)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if n_expected == 0:
            with pytest.raises(UserError):
                tile(resampled, p)
            return
        ps = tile(resampled, p)
    assert len(ps) == n_expected
    assert set(np.unique(ps.masks)) <= {0, 1} and not np.isnan(ps.images).any()


# --------------------------------------------------------------------------- split

PER_SOURCE = [5, 3, 4, 6, 2, 7, 5, 3, 4, 6]  # 45 patches in 10 images


def fake_patches(per_source: list[int]) -> PatchSet:
    source = np.repeat(np.arange(len(per_source)), per_source).astype(np.int64)
    n = len(source)
    return PatchSet(
        images=np.zeros((n, 1, 2, 2), np.float32),
        masks=np.zeros((n, 1, 2, 2), np.uint8),
        source=source,
        origin=np.zeros((n, 2), np.int64),
        names=tuple(f"img{i}" for i in range(len(per_source))),
    )


def sources_of(ps: PatchSet, idx: np.ndarray) -> set[str]:
    return {ps.names[s] for s in ps.source[idx]}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("n_pool", [None, 10])
def test_split_invariants(seed: int, n_pool: int | None) -> None:
    ps = fake_patches(PER_SOURCE)
    sp = split_by_source(ps, n_initial=4, n_val=5, n_test=6, n_pool=n_pool, seed=seed)
    assert (len(sp.initial), len(sp.val), len(sp.test)) == (4, 5, 6)
    for arr in (sp.initial, sp.pool, sp.val, sp.test):
        assert arr.dtype == np.int64 and np.all(np.diff(arr) > 0)
    every = np.concatenate([sp.initial, sp.pool, sp.val, sp.test])
    assert len(np.unique(every)) == len(every)
    train, val, test = sources_of(ps, sp.train), sources_of(ps, sp.val), sources_of(ps, sp.test)
    assert not (train & val or train & test or val & test)
    assert val == set(sp.val_sources) and test == set(sp.test_sources)
    assert train <= set(sp.train_sources)
    # whole images: test/val images hold >= the requested number; training gets the rest
    counts = dict(zip(ps.names, PER_SOURCE, strict=True))
    assert sum(counts[n] for n in sp.test_sources) >= 6
    assert sum(counts[n] for n in sp.val_sources) >= 5
    n_train = sum(counts[n] for n in sp.train_sources)
    assert len(sp.pool) == (n_train - 4 if n_pool is None else n_pool)
    # leftover val/test patches are not used for training
    train_rows = np.flatnonzero(np.isin(ps.source, [ps.names.index(n) for n in sp.train_sources]))
    assert set(sp.train) <= set(train_rows)
    sp.check(ps)


def test_split_whole_images_hand_checked() -> None:
    ps = fake_patches([4, 4, 4])  # one image each for test, val and training
    sp = split_by_source(ps, n_initial=1, n_val=1, n_test=1, n_pool=None, seed=0)
    assert len(sp.test_sources) == len(sp.val_sources) == len(sp.train_sources) == 1
    assert (len(sp.initial), len(sp.pool)) == (1, 3)
    train_image = ps.names.index(sp.train_sources[0])
    np.testing.assert_array_equal(sp.train, np.flatnonzero(ps.source == train_image))


def test_split_deterministic_and_seed_dependent() -> None:
    ps = fake_patches(PER_SOURCE)
    kwargs = {"n_initial": 4, "n_val": 5, "n_test": 6, "n_pool": None}
    a = split_by_source(ps, **kwargs, seed=7).to_dict()
    assert a == split_by_source(ps, **kwargs, seed=7).to_dict()
    assert a != split_by_source(ps, **kwargs, seed=8).to_dict()


def test_split_round_trip_json() -> None:
    ps = fake_patches(PER_SOURCE)
    sp = split_by_source(ps, 4, 5, 6, 10, seed=0)
    back = Split.from_dict(json.loads(json.dumps(sp.to_dict())))
    assert back.to_dict() == sp.to_dict()
    back.check(ps)


def test_split_check_and_constructor_catch_mismatches() -> None:
    ps = fake_patches([2, 2])
    with pytest.raises(UserError, match="not train sources"):
        bad = Split(np.array([0]), np.array([1]), np.array([2]), np.array([]), ("img1",), ("img0",))
        bad.check(ps)
    with pytest.raises(UserError, match="beyond"):
        Split(np.array([7]), np.array([]), np.array([]), np.array([]), ("img0",)).check(ps)
    with pytest.raises(ValueError, match="disjoint"):
        Split(np.array([0, 1]), np.array([1]), np.array([]), np.array([]))
    with pytest.raises(ValueError, match="only one"):
        Split(np.array([0]), np.array([]), np.array([]), np.array([]), ("a",), ("a",))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_initial": 1, "n_val": 1, "n_test": 46}, "test needs 46 .* hold 45 .* lower n_test"),
        ({"n_initial": 1, "n_val": 44, "n_test": 1}, "lower n_val"),
        ({"n_initial": 40, "n_val": 1, "n_test": 1}, "lower n_initial"),
        ({"n_initial": -1, "n_val": 1, "n_test": 1}, "n_initial must be >= 0"),
    ],
)
def test_split_errors_when_too_few(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(UserError, match=message):
        split_by_source(fake_patches(PER_SOURCE), **kwargs, n_pool=None, seed=0)


def test_split_error_when_no_training_image_left() -> None:
    with pytest.raises(UserError, match="0 training images hold 0"):
        split_by_source(fake_patches([3, 3]), n_initial=0, n_val=1, n_test=1, n_pool=None, seed=0)


def test_split_pool_too_large() -> None:
    with pytest.raises(UserError, match="n_initial \\+ n_pool = 101"):
        split_by_source(fake_patches(PER_SOURCE), 1, 1, 1, n_pool=100, seed=0)


# --------------------------------------------------------------------------- normalise


def test_normalizer_fit_and_apply() -> None:
    x = np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32)
    original = x.copy()
    norm = Normalizer.fit(x)
    assert norm.mean == 1.5 and norm.std == pytest.approx(np.sqrt(1.25), abs=1e-15)
    out = norm(x)
    assert out.dtype == np.float32 and out is not x
    np.testing.assert_allclose(out, (original - 1.5) / np.sqrt(1.25), atol=1e-6)
    np.testing.assert_array_equal(x, original)


def test_normalizer_uses_only_given_array_and_chunks_agree() -> None:
    rng = np.random.default_rng(0)
    train, held_out = rng.random((5, 1, 4, 4), dtype=np.float32), np.ones((3, 1, 4, 4), np.float32)
    norm = Normalizer.fit(train, chunk=7)  # chunks that do not divide the 80 values
    assert norm.mean == pytest.approx(train.astype(np.float64).mean(), abs=1e-12)
    assert norm.std == pytest.approx(train.astype(np.float64).std(), abs=1e-12)
    assert Normalizer.fit(np.concatenate([train, held_out])).mean != pytest.approx(norm.mean)


def test_normalizer_constant_and_empty() -> None:
    assert Normalizer.fit(np.full((3, 3), 0.5, np.float32)).std == 1e-6
    assert np.isfinite(Normalizer.fit(np.full(4, 0.5))(np.full(4, 0.5))).all()
    with pytest.raises(ValueError, match="empty"):
        Normalizer.fit(np.zeros((0, 1, 2, 2), np.float32))
