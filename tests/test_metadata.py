"""Image metadata: pixel sizes from OME-TIFF, ImageJ and TIFF tags; OME-TIFF names; images
of several channels refused or reduced to one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from activeseg.config import with_overrides
from activeseg.data.images import image_stem, read_image, split_name
from activeseg.data.metadata import file_pixel_size
from activeseg.data.phantom import make_phantom
from activeseg.data.prepare import prepare
from activeseg.data.sources import find_images, load_bids, load_folder, load_source
from activeseg.errors import UserError
from activeseg.presets import preset

RAMP = (np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 30).astype(np.uint16)


def _ome(path: Path, data: np.ndarray, **metadata: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data, metadata=metadata)
    return path


def _tif(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data)
    return path


def test_split_name_counts_ome_tiff_as_one_extension() -> None:
    assert split_name(Path("a/im0.ome.tif")) == ("im0", ".ome.tif")
    assert split_name(Path("im0.OME.TIFF")) == ("im0", ".ome.tiff")
    assert split_name(Path("x_SEM.PNG")) == ("x_SEM", ".png")
    assert image_stem(Path("im0.tif")) == "im0"


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1}, 0.1),
        ({"PhysicalSizeX": 0.1}, 0.1),  # y defaults to x
        (
            {
                "PhysicalSizeX": 250,
                "PhysicalSizeXUnit": "nm",
                "PhysicalSizeY": 250,
                "PhysicalSizeYUnit": "nm",
            },
            0.25,
        ),
        ({}, None),
    ],
)
def test_ome_tiff_physical_size(
    tmp_path: Path, metadata: dict[str, object], expected: float | None
) -> None:
    path = _ome(tmp_path / "a.ome.tif", RAMP, **metadata)
    assert file_pixel_size(path) == pytest.approx(expected)


def test_imagej_unit_and_resolution_tags(tmp_path: Path) -> None:
    path = tmp_path / "fiji.tif"
    tifffile.imwrite(
        path, RAMP, imagej=True, resolution=(1 / 0.3, 1 / 0.3), metadata={"unit": "um"}
    )
    assert file_pixel_size(path) == pytest.approx(0.3)
    tifffile.imwrite(path, RAMP, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "nm"})
    assert file_pixel_size(path) == pytest.approx(0.0005)


def test_resolution_tags_in_centimetres_and_inches_but_not_document_defaults(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, RAMP, resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    assert file_pixel_size(path) == pytest.approx(0.25)
    tifffile.imwrite(path, RAMP, resolution=(25_400 / 0.5, 25_400 / 0.5), resolutionunit="INCH")
    assert file_pixel_size(path) == pytest.approx(0.5)
    for dpi in (72, 300):  # what drawing programs write: not a microscope's pixel size
        tifffile.imwrite(path, RAMP, resolution=(dpi, dpi), resolutionunit="INCH")
        assert file_pixel_size(path) is None
    tifffile.imwrite(path, RAMP)  # tifffile's default: 1 pixel per (no) unit
    assert file_pixel_size(path) is None
    Image.fromarray(RAMP.astype(np.uint8)).save(tmp_path / "p.png")
    assert file_pixel_size(tmp_path / "p.png") is None


def test_anisotropic_metadata_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = _ome(tmp_path / "aniso.ome.tif", RAMP, PhysicalSizeX=0.1, PhysicalSizeY=0.2)
    with pytest.raises(UserError, match=r"aniso\.ome\.tif.*anisotropic.*--pixel-size"):
        file_pixel_size(path)


def test_channels_are_refused_or_one_is_chosen(tmp_path: Path) -> None:
    stack = np.stack([RAMP, RAMP // 2, 65535 - RAMP])
    path = _ome(tmp_path / "cyx.ome.tif", stack, axes="CYX", PhysicalSizeX=0.1)
    with pytest.raises(UserError, match=r"cyx\.ome\.tif.*3 channels.*--channel N.*0 to 2"):
        read_image(path)
    np.testing.assert_allclose(read_image(path, channel=2), (65535 - RAMP) / 65535, rtol=1e-6)
    with pytest.raises(UserError, match="3 channel.*channel 3 does not exist"):
        read_image(path, channel=3)
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 1] = 200
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png"), 0.587 * 200 / 255, rtol=1e-6)
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png", channel=1), 200 / 255)
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png", channel=0), 0)


def _ome_folder(root: Path, n: int = 4, size: int = 128, pixel: float = 0.1) -> None:
    """``images/im<i>.ome.tif`` (pixel size in the OME metadata) + ``masks/im<i>.tif``."""
    for i, s in enumerate(make_phantom(n_images=n, size=size, seed=3, hard_fraction=0.0)):
        image = np.round(s.image * 255).astype(np.uint8)
        _ome(root / "images" / f"im{i}.ome.tif", image, PhysicalSizeX=pixel, PhysicalSizeY=pixel)
        _tif(root / "masks" / f"im{i}.tif", s.mask * 255)


def test_an_ome_tiff_folder_pairs_and_is_resampled_without_a_pixel_size(tmp_path: Path) -> None:
    _ome_folder(tmp_path)
    samples = load_folder(tmp_path)
    assert [s.name for s in samples] == ["im0", "im1", "im2", "im3"]
    assert all(s.pixel_size == pytest.approx(0.1) for s in samples)
    assert [s.pixel_size for s in load_folder(tmp_path, pixel_size=0.4)] == [0.4] * 4  # flag wins
    config = with_overrides(
        preset("demo"),
        {
            "data.source": str(tmp_path),
            "data.pixel_size": 0.2,
            "data.patch_size": 32,
            "data.n_initial": 2,
            "data.n_pool": 2,
            "data.n_val": 4,
            "data.n_test": 4,
        },
    )
    data = prepare(config.data)
    # 128 px at 0.1 µm -> 64 px at 0.2 µm -> 2 x 2 patches of 32 px per image (4 x 4 unresampled)
    assert len(data.patches) == 4 * 4
    assert data.patches.pixel_size == pytest.approx(0.2)


def test_an_ome_tiff_folder_runs_a_simulation(tmp_path: Path) -> None:
    from activeseg.simulation import simulate

    _ome_folder(tmp_path / "data", n=4, size=64, pixel=0.2)
    config = with_overrides(
        preset("demo"),
        {
            "data.source": str(tmp_path / "data"),
            "data.pixel_size": 0.2,
            "data.patch_size": 32,
            "data.n_initial": 2,
            "data.n_pool": 2,
            "data.n_val": 2,
            "data.n_test": 4,
            "model.base_filters": 4,
            "train.epochs": 2,
            "train.device": "cpu",
            "train.precision": "fp32",
            "scoring.mc_samples": 2,
            "loop.strategies": "std_edt",
            "loop.repetitions": 1,
            "loop.iterations": 1,
            "loop.upper_bound": False,
        },
    )
    out = simulate(config, tmp_path / "run", progress=False, log=lambda line: None)
    lines = (out / "records-std_edt-rep0.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [0, 1]


def test_a_multi_channel_folder_needs_data_channel(tmp_path: Path) -> None:
    stack = np.stack([RAMP, 65535 - RAMP])
    _ome(tmp_path / "images" / "a.ome.tif", stack, axes="CYX")
    _tif(tmp_path / "masks" / "a.tif", (RAMP > 30000).astype(np.uint8) * 255)
    with pytest.raises(UserError, match=r"a\.ome\.tif is an image of 2 channels"):
        load_source(str(tmp_path))
    (sample,) = load_source(str(tmp_path), channel=1)
    np.testing.assert_allclose(sample.image, (65535 - RAMP) / 65535, rtol=1e-6)


def test_bids_sidecar_wins_over_metadata_and_metadata_fills_a_missing_one(tmp_path: Path) -> None:
    micr = tmp_path / "sub-a" / "micr"
    _ome(micr / "sub-a_sample-1_SEM.ome.tif", RAMP.astype(np.uint8), PhysicalSizeX=0.1)
    labels = tmp_path / "derivatives" / "labels" / "sub-a" / "micr"
    labels.mkdir(parents=True)
    Image.fromarray((RAMP > 30000).astype(np.uint8) * 255).save(
        labels / "sub-a_sample-1_SEM_seg-myelin-manual.png"
    )
    (sample,) = load_bids(tmp_path)
    assert sample.name == "sub-a_sample-1" and sample.pixel_size == pytest.approx(0.1)
    (micr / "sub-a_sample-1_SEM.json").write_text(json.dumps({"PixelSize": [0.3, 0.3]}))
    assert load_bids(tmp_path)[0].pixel_size == pytest.approx(0.3)


def test_find_images_names_ome_files_by_their_stem_with_their_pixel_size(tmp_path: Path) -> None:
    _ome(tmp_path / "im0.ome.tiff", RAMP, PhysicalSizeX=0.15)
    tifffile.imwrite(tmp_path / "im1.tif", RAMP)
    found = find_images(tmp_path)
    assert [(f.name, f.pixel_size) for f in found] == [("im0", pytest.approx(0.15)), ("im1", None)]
    assert [f.pixel_size for f in find_images(tmp_path, pixel_size=0.5)] == [0.5, 0.5]


def test_a_single_file_of_a_bids_dataset_takes_its_sidecars_pixel_size(tmp_path: Path) -> None:
    from activeseg.data.sources import image_file

    micr = tmp_path / "sub-a" / "micr"
    micr.mkdir(parents=True)
    Image.fromarray(RAMP.astype(np.uint8)).save(micr / "sub-a_sample-1_SEM.png")
    (tmp_path / "derivatives").mkdir()
    assert image_file(micr / "sub-a_sample-1_SEM.png").pixel_size is None
    (micr / "sub-a_SEM.json").write_text(json.dumps({"PixelSize": [0.13, 0.13]}))  # subject
    assert image_file(micr / "sub-a_sample-1_SEM.png").pixel_size == pytest.approx(0.13)
    assert image_file(micr / "sub-a_sample-1_SEM.png", 0.5).pixel_size == 0.5  # a flag wins
