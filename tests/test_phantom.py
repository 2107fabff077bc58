"""Tests for the synthetic axon–myelin phantom."""

from __future__ import annotations

import numpy as np
import pytest

from activeseg.data.phantom import _place, hard_flags, make_phantom
from activeseg.data.sources import Sample
from activeseg.errors import UserError


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return make_phantom(n_images=8, seed=3, hard_fraction=0.25)


def _cnr(sample: Sample) -> float:
    """(mean non-myelin − mean myelin) / pooled within-class standard deviation."""
    myelin, rest = sample.image[sample.mask == 1], sample.image[sample.mask == 0]
    return float((rest.mean() - myelin.mean()) / np.sqrt((myelin.var() + rest.var()) / 2))


def test_samples_have_the_contract(samples: list[Sample]) -> None:
    assert [s.name for s in samples] == [f"phantom-{i:03d}" for i in range(8)]
    for s in samples:
        assert s.image.shape == s.mask.shape == (256, 256)
        assert s.image.dtype == np.float32 and 0 <= s.image.min() and s.image.max() <= 1
        assert s.mask.dtype == np.uint8 and set(np.unique(s.mask)) == {0, 1}
        assert s.pixel_size == 0.1 and s.path is None


def test_same_seed_same_arrays_other_seed_different() -> None:
    first, again = make_phantom(3, size=64, seed=1), make_phantom(3, size=64, seed=1)
    other = make_phantom(3, size=64, seed=2)
    for a, b, c in zip(first, again, other, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert not np.array_equal(a.mask, c.mask)


def _global_rng_position() -> tuple[bytes, int]:
    """Key and position of numpy's legacy global generator (changes when it is drawn from)."""
    state = np.random.get_state(legacy=False)  # noqa: NPY002 (inspection only)
    assert isinstance(state, dict)
    return state["state"]["key"].tobytes(), state["state"]["pos"]


def test_global_numpy_rng_is_not_used() -> None:
    before = _global_rng_position()
    make_phantom(2, size=64, seed=5)
    assert _global_rng_position() == before


def test_myelin_fraction_is_plausible(samples: list[Sample]) -> None:
    fractions = [float(s.mask.mean()) for s in samples]
    assert all(0.15 < f < 0.5 for f in fractions), fractions


def test_myelin_is_darker_than_axoplasm_and_background(samples: list[Sample]) -> None:
    for s in samples:
        assert s.image[s.mask == 1].mean() < s.image[s.mask == 0].mean() - 0.1, s.name
    bright = make_phantom(2, size=128, seed=3, myelin_bright=True)
    for s in bright:
        assert s.image[s.mask == 1].mean() > s.image[s.mask == 0].mean() + 0.1, s.name


def test_hard_images_have_lower_contrast_to_noise(samples: list[Sample]) -> None:
    flags = hard_flags(8, seed=3, hard_fraction=0.25)
    assert flags.sum() == 2
    cnr = np.array([_cnr(s) for s in samples])
    assert cnr[flags].max() < 0.6 * cnr[~flags].min(), cnr
    assert hard_flags(4, seed=0, hard_fraction=0.0).sum() == 0
    assert hard_flags(4, seed=0, hard_fraction=1.0).all()


def test_hard_images_have_thinner_myelin_relative_to_fibres() -> None:
    easy = make_phantom(3, size=128, seed=4, hard_fraction=0.0)
    hard = make_phantom(3, size=128, seed=4, hard_fraction=1.0)
    assert np.mean([s.mask.mean() for s in hard]) < np.mean([s.mask.mean() for s in easy])


def test_sequential_placement_never_overlaps() -> None:
    rng = np.random.default_rng(0)
    radius = np.sort(rng.uniform(3, 20, 120))[::-1]
    centre, placed = _place(rng, radius, gap=2.0, size=200)
    assert len(centre) == placed.sum() > 20
    r = radius[placed]
    dist = np.linalg.norm(centre[:, None] - centre[None], axis=-1)
    off_diagonal = ~np.eye(len(r), dtype=bool)
    assert np.all((dist >= r[:, None] + r[None] + 2.0)[off_diagonal])


def test_pixel_size_scales_the_geometry() -> None:
    """At half the pixel size the same tissue spans twice the pixels: fewer, larger rings."""
    coarse = make_phantom(2, size=128, pixel_size=0.2, seed=6)
    fine = make_phantom(2, size=128, pixel_size=0.05, seed=6)
    assert all(s.pixel_size == 0.05 for s in fine)
    edges = [np.mean([np.abs(np.diff(s.mask, axis=1)).mean() for s in x]) for x in (coarse, fine)]
    assert edges[1] < 0.5 * edges[0]  # boundary density ∝ 1 / feature size in pixels


@pytest.mark.parametrize(
    "kwargs",
    [{"n_images": 0}, {"size": 8}, {"pixel_size": 0.0}, {"hard_fraction": 1.5}],
)
def test_invalid_arguments_are_user_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(UserError, match=next(iter(kwargs))):
        make_phantom(**kwargs)  # type: ignore[arg-type]
