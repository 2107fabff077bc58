"""Histogram mutual information: exact values on hand-made images, invariance to relabelling
intensities, independence gives 0; the min–max normalisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from activeseg.acquisition.similarity import min_max, mutual_information, quantise


def halves(flip: bool = False) -> np.ndarray:
    """A 4x4 image, left half 0, right half 1 (or mirrored): 1 bit of structure."""
    img = np.zeros((4, 4))
    img[:, 2:] = 1.0
    return img[:, ::-1] if flip else img


def test_quantise_uses_fixed_equal_bins_and_clips() -> None:
    q = quantise(torch.tensor([[0.0, 0.24, 0.25, 0.99, 1.0, 5.0, -1.0]]), 4, 0.0, 1.0)
    assert q.tolist() == [[0, 0, 1, 3, 3, 3, 0]]
    assert q.dtype == np.int64
    with pytest.raises(ValueError, match="at least 2 bins"):
        quantise(np.zeros((1, 2)), 1, 0.0, 1.0)


def test_mi_of_an_image_with_itself_is_its_entropy_and_relabelling_keeps_it() -> None:
    a = quantise(halves()[None], 2, 0.0, 1.0)
    inverted = quantise(1.0 - halves()[None], 2, 0.0, 1.0)  # same structure, other labels
    rows = quantise(halves().T[None], 2, 0.0, 1.0)  # top/bottom: independent of left/right
    mi = mutual_information(a, np.concatenate([a, inverted, rows]), 2)
    assert mi.shape == (1, 3)
    np.testing.assert_allclose(mi[0], [math.log(2), math.log(2), 0.0], atol=1e-12)


def test_mi_against_a_set_equals_pairwise_values() -> None:
    rng = np.random.default_rng(0)
    images = quantise(rng.random((5, 64)), 8, 0.0, 1.0)
    table = mutual_information(images[:2], images, 8)
    for i in range(2):
        for j in range(5):
            assert table[i, j] == pytest.approx(
                mutual_information(images[[i]], images[[j]], 8)[0, 0]
            )
    assert table[0, 0] > table[0, 2:].max()  # an image is most similar to itself


def test_mi_needs_equal_pixel_counts() -> None:
    with pytest.raises(ValueError, match="cannot be paired"):
        mutual_information(np.zeros((1, 4), np.int64), np.zeros((1, 5), np.int64), 2)


def test_min_max() -> None:
    np.testing.assert_allclose(min_max(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])
    assert min_max(np.array([3.0, 3.0])).tolist() == [0.0, 0.0]
