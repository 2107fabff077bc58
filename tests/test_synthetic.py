"""``data.source = synthetic`` with any preset: the phantom grows to the preset's split, at
its patch size and pixel size, and the default phantom stays the default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from activeseg.cli import main
from activeseg.config import DataConfig, with_overrides
from activeseg.data.patches import PatchSet, sources_needed, split_by_source
from activeseg.data.phantom import make_phantom
from activeseg.data.prepare import prepare
from activeseg.data.synthetic import phantom_layout, phantom_seed, synthetic_images, volume_count
from activeseg.files import read_records
from activeseg.presets import PRESETS, preset


def _synthetic(name: str, **overrides: object) -> DataConfig:
    return with_overrides(preset(name), {"data.source": "synthetic", **overrides}).data


def test_sources_needed_counts_whole_images_per_role() -> None:
    # 4 patches per image: test 20 -> 5 images, val 10 -> 3, train 5 + 40 -> 12
    assert sources_needed(4, 5, 10, 20, 40) == 20
    assert sources_needed(1, 2, 2, 20, 72) == 96
    assert sources_needed(16, 3, 6, 12, 30) == 5
    with pytest.raises(ValueError, match="per_source"):
        sources_needed(0, 1, 1, 1, 1)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_presets_split_fits_its_phantom(name: str) -> None:
    """Each preset's counts split the phantom's images (checked on the layout, without
    rendering the paper presets' 512² images)."""
    cfg = _synthetic(name)
    if cfg.spatial_dims == 2:
        n_images, side, pixel = phantom_layout(cfg)
        resampled = round(side * pixel / (cfg.pixel_size or pixel))
        per_image = (resampled // cfg.patch_size) ** 2
        assert per_image >= 1 and pixel == (cfg.pixel_size or 0.1)
    else:
        n_images, per_image = volume_count(cfg), 1
        assert cfg.whole_volume
    source = np.repeat(np.arange(n_images), per_image)
    patches = PatchSet(
        images=np.zeros((len(source), 1, 1, 1), np.float32),
        masks=np.zeros((len(source), 1, 1, 1), np.uint8),
        source=source,
        origin=np.zeros((len(source), 2), np.int64),
        names=tuple(f"p{i:03d}" for i in range(n_images)),
    )
    split = split_by_source(
        patches, cfg.n_initial, cfg.n_val, cfg.n_test, cfg.n_pool, seed=cfg.split_seed
    )
    assert (len(split.initial), len(split.val), len(split.test)) == (
        cfg.n_initial,
        cfg.n_val,
        cfg.n_test,
    )
    assert len(split.pool) == (cfg.n_pool if cfg.n_pool is not None else len(split.pool))
    assert len(split.pool) >= 1


def test_the_cpu_preset_renders_at_its_pixel_and_patch_size() -> None:
    cfg = _synthetic("cpu")
    data = prepare(cfg)
    assert data.patches.pixel_size == cfg.pixel_size == 0.2
    assert data.images.shape[1:] == (1, cfg.patch_size, cfg.patch_size)
    sizes = [len(getattr(data.split, k)) for k in ("initial", "val", "test")]
    assert sizes == [cfg.n_initial, cfg.n_val, cfg.n_test]
    # n_pool = none ("every remaining patch"): the phantom holds at least n_val + n_test
    assert cfg.n_pool is None and len(data.split.pool) >= cfg.n_val + cfg.n_test


def test_a_given_pixel_size_is_rendered_then_resampled() -> None:
    """``--pixel-size 0.1`` with the cpu preset: 0.1 µm images resampled to 0.2 µm, so each
    256-px image holds (128 // patch_size)² patches, and as many images are made as the
    split needs."""
    cfg = _synthetic("cpu", **{"data.source_pixel_size": 0.1})
    per_image = (128 // cfg.patch_size) ** 2
    pool = cfg.n_val + cfg.n_test  # n_pool = none
    needed = sources_needed(per_image, cfg.n_initial, cfg.n_val, cfg.n_test, pool)
    assert phantom_layout(cfg) == (needed, 256, 0.1) and needed > 12


def test_the_demo_keeps_the_default_phantom() -> None:
    demo = _synthetic("demo")
    assert phantom_layout(demo) == (12, 256, 0.1)
    default = make_phantom(seed=phantom_seed(demo))
    for a, b in zip(synthetic_images(demo), default, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)


def test_volume_presets_grow_the_volume_phantom() -> None:
    assert volume_count(_synthetic("cpu-3d")) == 5 + 60 + 8 + 30
    hippocampus = _synthetic("nath-hippocampus")  # n_pool none: val + test pool patches
    assert volume_count(hippocampus) == 10 + 100 + 50 + 50
    tiny = _synthetic("cpu-3d", **{"data.n_pool": 4, "data.n_test": 3, "data.n_val": 2})
    assert volume_count(tiny) == 16  # the default phantom when it suffices
    data = prepare(_synthetic("cpu-3d"))
    assert len(data.split.pool) == 60 and len(data.split.test) == 30


def test_simulate_synthetic_with_the_cpu_preset_runs(tmp_path: Path) -> None:
    """The issue's command (refused on the main before: "training needs n_initial + n_pool =
    45 patches ..."), with a short training."""
    out = tmp_path / "run"
    argv = ["simulate", "--data", "synthetic", "--preset", "cpu", "--strategies",
            "random,std_edt", "--repetitions", "1", "--iterations", "2", "--out", str(out),
            "--quiet", "--no-upper-bound", "--set", "train.epochs=2",
            "--set", "scoring.mc_samples=2", "--set", "scoring.test_uncertainty=false",
            "--set", "train.precision=fp32", "--set", "model.base_filters=2",
            "--set", "train.batch_size=2"]  # fmt: skip
    assert main(argv) == 0
    records = read_records(out / "records-std_edt-rep0.jsonl")
    first = preset("cpu").data.n_initial
    assert [r["n_labelled"] for r in records] == [first, first + 1, first + 2]
