"""Volumes: MSD and NIfTI folder sources, label checks, resampling, intensity window,
whole-volume samples and 3D tiles, the 3D phantom, the 3D pipeline of ``prepare``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import TINY_3D

from activeseg.config import with_overrides
from activeseg.data.prepare import prepare
from activeseg.data.volume_phantom import make_volume_phantom
from activeseg.data.volumes import (
    Volume,
    center_fit,
    grid_origins,
    load_msd,
    load_nifti_folder,
    load_volumes,
    prepare_volume,
    resample_volume,
    scale_intensity,
    volume_patches,
)
from activeseg.errors import UserError
from activeseg.presets import preset
from activeseg.validation import validate

MSD_HIPPOCAMPUS = Path(__file__).resolve().parents[1].parent / "shared/data/msd_hippocampus"
if not MSD_HIPPOCAMPUS.is_dir():
    MSD_HIPPOCAMPUS = Path("/work/shared/data/msd_hippocampus")


def _save(path: Path, data: np.ndarray, spacing: tuple[float, float, float] = (1, 1, 1)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, np.diag([*spacing, 1.0]))
    img.header.set_zooms(spacing)
    nib.save(img, str(path))


def _tiny_msd(root: Path, labels: dict[str, np.ndarray] | None = None) -> Path:
    """An MSD folder with 3 listed pairs, one unlisted image and one unlisted label."""
    rng = np.random.default_rng(0)
    entries = []
    for i in range(3):
        name = f"case_{i}"
        image = rng.uniform(0, 500, (6, 7, 5)).astype(np.float32)
        label = np.zeros((6, 7, 5), np.uint8)
        label[2:4, 2:5, 1:3] = 1
        label[4, 2:5, 1:3] = 2
        if labels and name in labels:
            label = labels[name]
        _save(root / "imagesTr" / f"{name}.nii.gz", image, (1.0, 1.5, 2.0))
        _save(root / "labelsTr" / f"{name}.nii.gz", label, (1.0, 1.5, 2.0))
        entries.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    _save(root / "imagesTr" / "stray.nii.gz", np.zeros((2, 2, 2), np.float32))
    _save(root / "labelsTr" / "orphan.nii.gz", np.zeros((9, 9, 9), np.uint8))
    meta = {"labels": {"0": "background", "1": "a", "2": "b"}, "training": entries}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.skipif(not MSD_HIPPOCAMPUS.is_dir(), reason="MSD hippocampus data not present")
def test_msd_hippocampus_reads_all_260_listed_pairs_and_ignores_the_orphans() -> None:
    with pytest.warns(UserWarning, match="3 file.*not listed.*ignored") as record:
        volumes = load_msd(MSD_HIPPOCAMPUS, classes=3)
    message = str(record[0].message)
    for orphan in ("hippocampus_118", "hippocampus_010", "hippocampus_281"):
        assert orphan in message
    assert len(volumes) == 260
    listed = json.loads((MSD_HIPPOCAMPUS / "dataset.json").read_text())["training"]
    assert {v.name for v in volumes} == {Path(e["image"]).name[:-7] for e in listed}
    shapes = np.array([v.image.shape for v in volumes])
    assert shapes.min(0).tolist() == [31, 40, 24] and shapes.max(0).tolist() == [43, 59, 47]
    assert all(v.spacing == (1.0, 1.0, 1.0) for v in volumes)
    first = next(v for v in volumes if v.name == "hippocampus_001")
    raw = nib.load(str(MSD_HIPPOCAMPUS / "imagesTr/hippocampus_001.nii.gz"))
    assert first.image.shape == raw.shape and first.mask.shape == raw.shape
    assert first.image.dtype == np.float32 and first.mask.dtype == np.uint8
    assert all(set(np.unique(v.mask)) == {0, 1, 2} for v in volumes)


def test_msd_loader_reads_listed_pairs_with_spacing_and_warns_about_unlisted(
    tmp_path: Path,
) -> None:
    root = _tiny_msd(tmp_path / "task")
    with pytest.warns(UserWarning, match=r"2 file.*imagesTr/stray.nii.gz.*labelsTr/orphan"):
        volumes = load_volumes(str(root), classes=3)
    assert [v.name for v in volumes] == ["case_0", "case_1", "case_2"]
    assert volumes[0].spacing == (1.0, 1.5, 2.0)
    assert volumes[0].image.shape == (6, 7, 5)
    assert volumes[0].mask[4, 3, 1] == 2 and volumes[0].mask[0, 0, 0] == 0


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.full((6, 7, 5), 3, np.uint8), r"case_1.nii.gz holds value\(s\) 3.*0 .. 2"),
        (np.full((6, 7, 5), 0.5, np.float32), r"case_1.nii.gz holds value\(s\) 0.5"),
        (np.zeros((6, 7, 4), np.uint8), r"case_1.nii.gz has shape \(6, 7, 5\).*\(6, 7, 4\)"),
    ],
)
def test_unexpected_label_values_or_shapes_are_a_user_error_naming_the_file(
    tmp_path: Path, bad: np.ndarray, match: str
) -> None:
    root = _tiny_msd(tmp_path / "task", labels={"case_1": bad})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UserError, match=match):
            load_msd(root, classes=3)


def test_class_count_must_match_the_dataset_labels(tmp_path: Path) -> None:
    root = _tiny_msd(tmp_path / "task")
    with pytest.raises(UserError, match="declares 3 labels.*set data.num_classes=3"):
        load_msd(root, classes=2)


def test_missing_listed_file_names_it(tmp_path: Path) -> None:
    root = _tiny_msd(tmp_path / "task")
    (root / "imagesTr" / "case_2.nii.gz").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UserError, match="volume file not found: .*case_2.nii.gz"):
            load_msd(root, classes=3)


def test_nifti_folder_pairs_by_name_and_names_orphans(tmp_path: Path) -> None:
    for name in ("a", "b"):
        _save(tmp_path / "images" / f"{name}.nii.gz", np.ones((4, 4, 4), np.float32), (2, 2, 2))
        _save(
            tmp_path / "labels" / f"{name}.nii.gz",
            np.eye(4, dtype=np.uint8)[:, :, None] * np.ones((1, 1, 4), np.uint8),
        )
    volumes = load_volumes(str(tmp_path), classes=2)
    assert [v.name for v in volumes] == ["a", "b"] and volumes[0].spacing == (2.0, 2.0, 2.0)
    _save(tmp_path / "images" / "c.nii.gz", np.ones((4, 4, 4), np.float32))
    with pytest.raises(UserError, match="images without labels: c"):
        load_nifti_folder(tmp_path, classes=2)


def test_scale_intensity_absolute_percentile_and_minmax() -> None:
    image = np.array([-10.0, 0.0, 1024.0, 2048.0, 5000.0])
    np.testing.assert_allclose(scale_intensity(image, (0, 2048)), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(scale_intensity(image, None), (image + 10) / 5010, rtol=1e-6)
    ramp = np.arange(101.0)
    scaled = scale_intensity(ramp, (10, 90), by_percentile=True)
    assert scaled[10] == 0 and scaled[90] == 1 and scaled[50] == pytest.approx(0.5)
    assert scale_intensity(np.ones(4), None).tolist() == [0, 0, 0, 0]


def test_resampling_follows_the_spacing_and_keeps_labels() -> None:
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:6, 2:6, 2:6] = 1
    mask[4:6, 2:6, 2:6] = 2
    volume = Volume("v", mask.astype(np.float32), mask, (1.0, 1.0, 2.0))
    out = resample_volume(volume, 2.0)
    assert out.image.shape == (4, 4, 8) and out.spacing == (2.0, 2.0, 2.0)
    assert out.mask.dtype == np.uint8 and set(np.unique(out.mask)) == {0, 1, 2}
    assert out.mask[1, 1, 2] == 1 and out.mask[2, 1, 2] == 2 and out.mask[0, 0, 0] == 0
    assert resample_volume(volume, None) is volume


def test_center_fit_crops_and_pads_around_the_centre() -> None:
    array = np.arange(5 * 2 * 4).reshape(5, 2, 4)
    out, origin = center_fit(array, 3)
    assert origin.tolist() == [1, -1, 0]
    np.testing.assert_array_equal(out[:, 1:3, :], array[1:4, :, 0:3])
    assert (out[:, 0] == 0).all()


def test_whole_volume_samples_and_3d_tiles() -> None:
    volumes = make_volume_phantom(n_volumes=3, shape=(10, 12, 9), classes=3, seed=1)
    whole = volume_patches(volumes, 8, whole=True)
    assert whole.images.shape == (3, 1, 8, 8, 8) and whole.origin.shape == (3, 3)
    assert whole.source.tolist() == [0, 1, 2] and whole.pixel_size == 1.0
    tiles = volume_patches(volumes, 4, whole=False)
    assert len(tiles) == 3 * 2 * 3 * 2
    assert grid_origins((10, 12, 9), 4)[0].tolist() == [1, 0, 0]
    i = 5
    o, v = tiles.origin[i], volumes[tiles.source[i]]
    np.testing.assert_array_equal(
        tiles.masks[i, 0], v.mask[o[0] : o[0] + 4, o[1] : o[1] + 4, o[2] : o[2] + 4]
    )
    with pytest.raises(UserError, match="no volume holds one 16\\^3 patch"):
        volume_patches(volumes, 16, whole=False)


def test_volume_phantom_is_seeded_and_has_every_class() -> None:
    a, b = make_volume_phantom(2, seed=3), make_volume_phantom(2, seed=3)
    np.testing.assert_array_equal(a[1].image, b[1].image)
    assert all(set(np.unique(v.mask)) == {0, 1, 2} for v in a)


def test_prepare_splits_volumes_by_source_and_normalises_on_training_volumes() -> None:
    config = with_overrides(preset("cpu-3d"), TINY_3D)
    validate(config)
    data = prepare(config.data)
    assert data.images.shape == (16, 1, 16, 16, 16)
    assert len(data.split.pool) == 6 and len(data.split.test) == 3
    train = data.images[data.split.train].double()
    assert abs(float(train.mean())) < 1e-4 and float(train.std()) == pytest.approx(1, abs=1e-3)


def test_prepare_volume_windows_then_resamples() -> None:
    volume = Volume(
        "v", np.full((4, 4, 4), 3000.0, np.float32), np.zeros((4, 4, 4), np.uint8), (1, 1, 1)
    )
    out = prepare_volume(volume, 2.0, (0, 2048))
    assert out.image.shape == (2, 2, 2) and np.allclose(out.image, 1.0)
