"""Tests for image/mask reading and the BIDS, folder and dispatching data sources."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from activeseg.data.images import read_image, read_mask, write_mask_png
from activeseg.data.sources import Sample, load_bids, load_folder, load_source
from activeseg.errors import UserError

REAL_DATA = Path(__file__).resolve().parents[2] / "shared/data/data_axondeepseg_sem"
GRAY = np.array([[0, 51, 102], [153, 204, 255]], dtype=np.uint8)


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


def _json(path: Path, content: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


# --- read_image -------------------------------------------------------------------------


def test_read_image_gray_divides_by_255(tmp_path: Path) -> None:
    image = read_image(_png(tmp_path / "g.png", GRAY))
    assert image.dtype == np.float32 and image.shape == (2, 3)
    np.testing.assert_allclose(image, GRAY / 255, atol=1e-7)


def test_read_image_gray_alpha_drops_alpha(tmp_path: Path) -> None:
    alpha = np.array([[0, 255, 10], [255, 0, 128]], dtype=np.uint8)
    path = _png(tmp_path / "la.png", np.stack([GRAY, alpha], axis=-1), mode="LA")
    assert Image.open(path).mode == "LA"
    np.testing.assert_allclose(read_image(path), GRAY / 255, atol=1e-7)


@pytest.mark.parametrize("channels", [3, 4])
def test_read_image_colour_is_601_luminance(tmp_path: Path, channels: int) -> None:
    rgb = np.zeros((1, 4, channels), dtype=np.uint8)
    rgb[0, 0, 0] = rgb[0, 1, 1] = rgb[0, 2, 2] = 255  # pure red, green, blue; then white
    rgb[0, 3, :3] = 255
    if channels == 4:
        rgb[..., 3] = [0, 50, 100, 255]  # alpha must not matter
    image = read_image(_png(tmp_path / "c.png", rgb))
    np.testing.assert_allclose(image[0], [0.299, 0.587, 0.114, 1.0], atol=1e-6)


def test_read_image_uint16_tiff_divides_by_65535(tmp_path: Path) -> None:
    data = np.array([[0, 1000], [32768, 65535]], dtype=np.uint16)
    tifffile.imwrite(tmp_path / "u16.tif", data)
    np.testing.assert_allclose(read_image(tmp_path / "u16.tif"), data / 65535, rtol=1e-6)


def test_read_image_lzw_tiff_falls_back_to_pillow(tmp_path: Path) -> None:
    data = np.array([[0, 1000], [32768, 65535]], dtype=np.uint16)
    Image.fromarray(data).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    np.testing.assert_allclose(read_image(tmp_path / "lzw.tif"), data / 65535, rtol=1e-6)


def test_read_image_float_tiff_kept_in_unit_range(tmp_path: Path) -> None:
    data = np.array([[0.25, 0.5], [0.75, 1.0]], dtype=np.float32)
    tifffile.imwrite(tmp_path / "f.tiff", data)
    np.testing.assert_array_equal(read_image(tmp_path / "f.tiff"), data)


def test_read_image_float_tiff_out_of_range_is_min_max_scaled(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "f.tif", np.array([[-2.0, 0.0], [2.0, 6.0]], dtype=np.float32))
    np.testing.assert_allclose(read_image(tmp_path / "f.tif"), [[0, 0.25], [0.5, 1]])


def test_read_image_multipage_tiff_is_user_error(tmp_path: Path) -> None:
    path = tmp_path / "stack.tif"
    with tifffile.TiffWriter(path) as tif:
        for _ in range(3):
            tif.write(GRAY)
    with pytest.raises(UserError, match="stack.tif.*3 pages"):
        read_image(path)


def test_truncated_png_is_user_error_naming_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    whole = _png(tmp_path / "whole.png", rng.integers(0, 255, (64, 64), dtype=np.uint8))
    cut = tmp_path / "cut_image.png"
    cut.write_bytes(whole.read_bytes()[:200])
    with pytest.raises(UserError, match=r"cut_image\.png.*truncated"):
        read_image(cut)
    with pytest.raises(UserError, match=r"cut_image\.png"):
        read_mask(cut)


def test_missing_and_unsupported_files_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        read_image(tmp_path / "absent.png")
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(UserError, match="unsupported"):
        read_image(tmp_path / "x.bmp")


# --- read_mask / write_mask_png ---------------------------------------------------------


@pytest.mark.filterwarnings("ignore:mask .* of its pixels lie between")  # tiny masks
@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 1, 1, 0], [0, 1, 1, 0]),
        ([0, 255, 255, 0], [0, 1, 1, 0]),
        ([0, 130, 233, 255], [0, 1, 1, 1]),  # anti-aliased edges, as in sub-rat2
        ([0, 100, 127, 128], [0, 0, 0, 1]),  # half range of uint8 is 127.5
    ],
)
def test_read_mask_binarises_at_half_range(
    tmp_path: Path, values: list[int], expected: list[int]
) -> None:
    mask = read_mask(_png(tmp_path / "m.png", np.array([values], dtype=np.uint8)))
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, [expected])


@pytest.mark.filterwarnings("ignore:mask .* of its pixels lie between")  # tiny masks
def test_read_mask_uint16_and_float_and_colour(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "u16.tif", np.array([[0, 30000, 40000, 65535]], np.uint16))
    np.testing.assert_array_equal(read_mask(tmp_path / "u16.tif"), [[0, 0, 1, 1]])
    tifffile.imwrite(tmp_path / "f.tif", np.array([[0.0, 0.4, 0.6, 1.0]], np.float32))
    np.testing.assert_array_equal(read_mask(tmp_path / "f.tif"), [[0, 0, 1, 1]])
    tifffile.imwrite(tmp_path / "f10.tif", np.array([[0.0, 4.0, 6.0, 10.0]], np.float32))
    np.testing.assert_array_equal(read_mask(tmp_path / "f10.tif"), [[0, 0, 1, 1]])
    rgb = np.zeros((1, 2, 3), np.uint8)
    rgb[0, 1] = 255
    np.testing.assert_array_equal(read_mask(_png(tmp_path / "rgb.png", rgb)), [[0, 1]])


def test_write_mask_png_round_trip_and_no_temporary_left(tmp_path: Path) -> None:
    mask = np.array([[0, 1, 1], [1, 0, 0]], dtype=np.uint8)
    path = tmp_path / "out" / "a_seg-myelin.png"
    write_mask_png(path, mask)
    write_mask_png(path, mask.astype(bool))  # overwrite
    stored = np.asarray(Image.open(path))
    np.testing.assert_array_equal(stored, mask * 255)
    np.testing.assert_array_equal(read_mask(path), mask)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    with pytest.raises(ValueError, match="0 or 1"):
        write_mask_png(path, mask * 255)


# --- BIDS -------------------------------------------------------------------------------


def _bids_sample(
    root: Path, sub: str, sample: str, shape: tuple[int, int] = (6, 8), label: bool = True
) -> Path:
    """Write sub-<sub>/micr/sub-<sub>_sample-<sample>_SEM.png and its myelin label."""
    stem = f"sub-{sub}_sample-{sample}_SEM"
    image = _png(root / f"sub-{sub}/micr/{stem}.png", np.full(shape, 100, np.uint8))
    if label:
        mask = np.zeros(shape, np.uint8)
        mask[: shape[0] // 2] = 255
        _png(root / f"derivatives/labels/sub-{sub}/micr/{stem}_seg-myelin-manual.png", mask)
    return image


def _pixel_json(size: object, units: str | None = None) -> dict[str, object]:
    meta: dict[str, object] = {"PixelSize": [size, size]}
    if units is not None:
        meta["PixelSizeUnits"] = units
    return meta


def test_bids_sidecar_inheritance_sample_subject_root(tmp_path: Path) -> None:
    for sub, sample in [("a", "1"), ("a", "2"), ("b", "3")]:
        _bids_sample(tmp_path, sub, sample)
    _json(tmp_path / "SEM.json", _pixel_json(0.0001, "mm"))  # dataset level: 0.1 µm
    _json(tmp_path / "sub-a/micr/sub-a_SEM.json", _pixel_json(0.2, "um"))  # subject level
    _json(tmp_path / "sub-a/micr/sub-a_sample-1_SEM.json", _pixel_json(500, "nm"))
    samples = load_bids(tmp_path)
    assert [s.name for s in samples] == ["sub-a_sample-1", "sub-a_sample-2", "sub-b_sample-3"]
    assert [s.pixel_size for s in samples] == pytest.approx([0.5, 0.2, 0.1])
    first = samples[0]
    assert first.path == tmp_path / "sub-a/micr/sub-a_sample-1_SEM.png"
    assert first.image.shape == first.mask.shape == (6, 8)
    assert first.mask.sum() == 24 and set(np.unique(first.mask)) == {0, 1}


def test_bids_units_inherited_separately_from_size(tmp_path: Path) -> None:
    """BIDS merges keys across levels, so units may come from a more general sidecar."""
    _bids_sample(tmp_path, "a", "1")
    _json(tmp_path / "SEM.json", {"PixelSizeUnits": "nm"})
    _json(tmp_path / "sub-a/micr/sub-a_sample-1_SEM.json", {"PixelSize": [70, 70]})
    assert load_bids(tmp_path)[0].pixel_size == pytest.approx(0.07)


@pytest.mark.parametrize(
    "meta",
    [_pixel_json(0), _pixel_json(-1), _pixel_json("abc"), {"PixelSize": "abc"}, {"Other": 1}],
)
def test_bids_invalid_pixel_size_names_json(tmp_path: Path, meta: dict[str, object]) -> None:
    _bids_sample(tmp_path, "a", "1")
    _json(tmp_path / "sub-a/micr/sub-a_sample-1_SEM.json", meta)
    with pytest.raises(UserError, match=re.escape("sub-a_sample-1_SEM.json")):
        load_bids(tmp_path)


def test_bids_missing_sidecar_anisotropic_and_bad_units(tmp_path: Path) -> None:
    _bids_sample(tmp_path, "a", "1")
    with pytest.raises(UserError, match="no PixelSize"):
        load_bids(tmp_path)
    sidecar = tmp_path / "sub-a/micr/sub-a_SEM.json"
    _json(sidecar, {"PixelSize": [0.1, 0.2]})
    with pytest.raises(UserError, match="sub-a_SEM.json.*anisotropic"):
        load_bids(tmp_path)
    _json(sidecar, _pixel_json(0.1, "inch"))
    with pytest.raises(UserError, match="sub-a_SEM.json.*PixelSizeUnits"):
        load_bids(tmp_path)
    sidecar.write_text("{not json")
    with pytest.raises(UserError, match="sub-a_SEM.json"):
        load_bids(tmp_path)


def test_bids_size_mismatch_names_both_files(tmp_path: Path) -> None:
    image = _bids_sample(tmp_path, "a", "1", label=False)
    label = tmp_path / "derivatives/labels/sub-a/micr/sub-a_sample-1_SEM_seg-myelin-manual.png"
    _png(label, np.zeros((5, 8), np.uint8))
    _json(tmp_path / "SEM.json", _pixel_json(0.1))
    with pytest.raises(UserError, match=f"{re.escape(image.name)}.*{re.escape(label.name)}"):
        load_bids(tmp_path)


def test_bids_unlabelled_image_warns_and_is_skipped(tmp_path: Path) -> None:
    _bids_sample(tmp_path, "a", "1")
    _bids_sample(tmp_path, "a", "2", label=False)
    _json(tmp_path / "SEM.json", _pixel_json(0.1))
    with pytest.warns(UserWarning, match="sub-a_sample-2_SEM.png"):
        samples = load_bids(tmp_path)
    assert [s.name for s in samples] == ["sub-a_sample-1"]


def test_bids_without_images_or_labels_is_user_error(tmp_path: Path) -> None:
    (tmp_path / "sub-a/micr").mkdir(parents=True)
    with pytest.raises(UserError, match="no SEM images"):
        load_bids(tmp_path)
    _bids_sample(tmp_path, "a", "1", label=False)
    with pytest.warns(UserWarning), pytest.raises(UserError, match="seg-myelin-manual"):
        load_bids(tmp_path)
    with pytest.raises(UserError, match="no TEM images"):
        load_bids(tmp_path, modality="TEM")


# --- folder source ----------------------------------------------------------------------


def _folder_pair(root: Path, image_name: str, mask_name: str | None) -> None:
    _png(root / "images" / image_name, GRAY)
    if mask_name is not None:
        _png(root / "masks" / mask_name, (GRAY > 100).astype(np.uint8) * 255)


def test_folder_pairs_by_stem_with_optional_suffix(tmp_path: Path) -> None:
    _folder_pair(tmp_path, "b.png", "b.png")
    _folder_pair(tmp_path, "a.tif", "a_seg-myelin-manual.png")
    _folder_pair(tmp_path, "c.png", "c_mask.png")
    _folder_pair(tmp_path, "d.png", "d_lab.png")
    samples = load_folder(tmp_path, pixel_size=0.25, mask_suffix="_lab")
    assert [s.name for s in samples] == ["a", "b", "c", "d"]
    assert all(s.pixel_size == 0.25 for s in samples)
    np.testing.assert_array_equal(samples[0].mask, [[0, 0, 1], [1, 1, 1]])
    assert load_folder(tmp_path, mask_suffix="_lab")[0].pixel_size is None


def test_folder_orphans_are_listed(tmp_path: Path) -> None:
    _folder_pair(tmp_path, "a.png", "a.png")
    _folder_pair(tmp_path, "lonely.png", None)
    _png(tmp_path / "masks/stray_mask.png", GRAY)
    with pytest.raises(UserError, match="without a mask: lonely.png.*without an image: stray"):
        load_folder(tmp_path)
    (tmp_path / "images/lonely.png").unlink()
    _png(tmp_path / "masks/a_mask.png", GRAY)
    with pytest.raises(UserError, match="several masks: a"):
        load_folder(tmp_path)


def test_folder_bad_layout_and_pixel_size(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="images"):
        load_folder(tmp_path)
    _folder_pair(tmp_path, "a.png", "a.png")
    with pytest.raises(UserError, match="pixel size"):
        load_folder(tmp_path, pixel_size=0.0)


# --- load_source ------------------------------------------------------------------------


def test_load_source_dispatch(tmp_path: Path) -> None:
    bids = tmp_path / "bids"
    _bids_sample(bids, "a", "1")
    _json(bids / "SEM.json", _pixel_json(0.1))
    assert [s.name for s in load_source(str(bids))] == ["sub-a_sample-1"]
    with pytest.raises(UserError, match="sidecars"):
        load_source(str(bids), pixel_size=0.1)

    folder = tmp_path / "folder"
    _folder_pair(folder, "x.png", "x.png")
    assert [s.pixel_size for s in load_source(str(folder), pixel_size=0.3)] == [0.3]

    with pytest.raises(UserError, match=f"{re.escape(str(tmp_path))}.*BIDS"):
        load_source(str(tmp_path))
    with pytest.raises(UserError, match="nowhere.*synthetic"):
        load_source(str(tmp_path / "nowhere"))


# --- the real AxonDeepSeg SEM dataset ---------------------------------------------------

EXPECTED_PIXEL_SIZES = {
    "sub-rat1_sample-data1": 0.18,
    "sub-rat2_sample-data5": 0.093,
    "sub-rat3_sample-data9": 0.1,  # subject-level sidecar sub-rat3_SEM.json
    "sub-rat3_sample-data10": 0.1,
    "sub-rat3_sample-data11": 0.1,
    "sub-rat4_sample-data12": 0.1,
    "sub-rat5_sample-data14": 0.13,
    "sub-rat6_sample-data15": 0.13,  # image stored as gray + alpha
    "sub-rat7_sample-Maxo03img60": 0.07,
    "sub-rat8_sample-V915": 0.07,
}


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real SEM dataset not found at {REAL_DATA}")
def test_real_axondeepseg_sem_dataset() -> None:
    samples = load_source(str(REAL_DATA))
    assert all(isinstance(s, Sample) for s in samples)
    assert {s.name: s.pixel_size for s in samples} == pytest.approx(EXPECTED_PIXEL_SIZES)
    assert [s.name for s in samples] == sorted(EXPECTED_PIXEL_SIZES)
    for sample in samples:
        assert sample.image.shape == sample.mask.shape and sample.image.ndim == 2
        assert (
            sample.image.dtype == np.float32 and 0 <= sample.image.min() < sample.image.max() <= 1
        )
        assert sample.mask.dtype == np.uint8 and set(np.unique(sample.mask)) == {0, 1}
        assert 0.2 < sample.mask.mean() < 0.45, sample.name  # myelin covers 27–40 %
