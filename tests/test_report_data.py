"""The report's header and annotation hours say what was really done to the data: a folder
of images without a pixel size is not resampled, volumes are measured in mm, and the paper's
axon-count hours belong to axon/myelin labels only."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from conftest import TINY_OVERRIDES

from activeseg.cli import main
from activeseg.config import Config, with_overrides
from activeseg.data.images import write_mask_png
from activeseg.data.phantom import make_phantom
from activeseg.errors import UserError
from activeseg.presets import preset
from activeseg.report.annotation import AXON, PATCH, annotation_cost
from activeseg.report.build import write_report
from activeseg.report.header import describe_patches
from activeseg.simulation import simulate


def _quiet(config: Config, out: Path) -> Path:
    return simulate(config, out, progress=False, log=lambda line: None)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _text(html: str) -> str:
    """The page's visible text (tags dropped, whitespace collapsed)."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


# ----------------------------------------------------------------------------- header text


def test_the_header_describes_pixel_sizes_as_prepared() -> None:
    d = preset("cpu").data  # data.pixel_size = 0.2
    side = f"{d.patch_size}-pixel patches"
    assert describe_patches(d, ((0.2,), (0.2,))) == f"{side} at 0.2 µm/pixel"
    unknown = describe_patches(d, (None, None))
    assert unknown.startswith(f"{side} at native pixel size (unknown")
    assert "0.2" not in unknown
    mixed = describe_patches(d, ((0.2,), None, (0.2,)))
    assert "at 0.2 µm/pixel for 2 images; 1 of 3 images at native pixel size (unknown" in mixed
    native = with_overrides(preset("cpu"), {"data.pixel_size": None}).data
    assert "native pixel sizes 0.093–0.18 µm/pixel" in describe_patches(native, ((0.18,), (0.093,)))
    assert "as configured; the data was not loaded" in describe_patches(d, None)


def test_the_header_describes_volumes_in_mm() -> None:
    d = preset("cpu-3d").data  # data.spacing = 2 mm, 24³ whole-volume samples
    text = describe_patches(d, ((2.0, 2.0, 2.0),))
    assert text == "24³-voxel samples (whole volumes cropped or padded) at 2 mm spacing"
    native = with_overrides(preset("cpu-3d"), {"data.spacing": None}).data
    assert describe_patches(native, ((1.0, 1.5, 2.0),)).endswith(
        "at 1 x 1.5 x 2 mm spacing (native)"
    )
    assert "native voxel spacings 1–2 mm" in describe_patches(native, ((1.0,) * 3, (2.0,) * 3))
    assert "µm" not in describe_patches(native, None)


# ----------------------------------------------------------------------------- cost rule


def test_axon_hours_belong_to_axon_myelin_labels_only(tmp_path: Path) -> None:
    demo = preset("demo")
    cost, _ = annotation_cost(demo)  # the phantom's masks are myelin
    assert cost is not None and (cost.unit, cost.minutes) == (AXON, 3.0)
    bids = tmp_path / "bids"
    (bids / "derivatives").mkdir(parents=True)
    cost, _ = annotation_cost(with_overrides(demo, {"data.source": str(bids)}))
    assert cost is not None and cost.unit == AXON and "seg-myelin-manual" in cost.why
    membranes = {"data.source": str(bids), "data.label_suffix": "seg-membrane"}
    cost, note = annotation_cost(with_overrides(demo, membranes))
    assert cost is None and "--minutes-per-patch" in note
    folder = tmp_path / "folder"
    (folder / "images").mkdir(parents=True)
    cost, note = annotation_cost(with_overrides(demo, {"data.source": str(folder)}))
    assert cost is None and "not known to be myelin" in note
    cost, _ = annotation_cost(with_overrides(demo, {"data.source": str(folder)}), 2.0)
    assert cost is not None and (cost.unit, cost.minutes) == (AXON, 2.0)  # opt-in
    volumes = preset("cpu-3d")
    cost, note = annotation_cost(volumes)
    assert cost is None and "volumes" in note
    cost, _ = annotation_cost(volumes, minutes_per_patch=5.0)
    assert cost is not None and (cost.unit, cost.minutes) == (PATCH, 5.0)
    with pytest.raises(UserError, match="for volumes give --minutes-per-patch"):
        annotation_cost(volumes, minutes_per_axon=3.0)
    with pytest.raises(UserError, match="not both"):
        annotation_cost(demo, 3.0, 5.0)
    with pytest.raises(UserError, match="positive"):
        annotation_cost(demo, minutes_per_patch=0.0)


# ----------------------------------------------------------------------------- a folder run


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run on a folder of images and masks with no pixel size, under a config that
    asks for 0.2 µm/pixel (as the cpu preset does): the images are used as they are."""
    root = tmp_path_factory.mktemp("folder")
    (root / "data" / "images").mkdir(parents=True)
    for sample in make_phantom(n_images=4, size=64, seed=2, hard_fraction=0.0):
        tifffile.imwrite(root / "data" / "images" / f"{sample.name}.tif", sample.image)
        write_mask_png(root / "data" / "masks" / f"{sample.name}.png", sample.mask)
    overrides = {
        **TINY_OVERRIDES,
        "data.source": str(root / "data"),
        "data.pixel_size": 0.2,
        "data.patch_size": 32,
        "loop.repetitions": 1,
        "loop.iterations": 1,
        "loop.upper_bound": False,
        "scoring.test_uncertainty": False,
    }
    with pytest.warns(UserWarning, match="not resampled"):
        return _quiet(with_overrides(preset("demo"), overrides), root / "run")


def test_a_folder_without_pixel_size_is_reported_at_native_size_without_hours(
    folder_run: Path, tmp_path: Path
) -> None:
    text = _text(write_report(folder_run, tmp_path / "r" / "report.html").read_text())
    assert "32-pixel patches at native pixel size (unknown" in text
    assert "0.2 µm/pixel" not in text
    assert "Annotation hours are left out" in text and "myelinated axons x" not in text
    verdict = _rows(tmp_path / "r" / "verdict.csv")
    assert all(r["hours_budget_known"] == "0" for r in verdict)
    assert "hours" not in text.split("unique picks")[0].split("AULC − random")[-1]


def test_a_per_patch_cost_prices_the_added_patches(folder_run: Path, tmp_path: Path) -> None:
    argv = ["report", str(folder_run), "--out", str(tmp_path / "r.html")]
    assert main([*argv, "--minutes-per-patch", "12"]) == 0
    rows = _rows(tmp_path / "verdict_per_repetition.csv")
    assert [float(r["hours_budget"]) for r in rows] == pytest.approx([12 / 60] * len(rows))
    assert "Hours = patches x 12 min" in _text((tmp_path / "r.html").read_text())
    assert main([*argv, "--minutes-per-axon", "3", "--minutes-per-patch", "1"]) == 2


# ----------------------------------------------------------------------------- MSD volumes


def _msd(root: Path, n: int = 8) -> Path:
    """An MSD task folder of ``n`` listed 10 x 12 x 8 volumes of 1 x 1.5 x 2 mm voxels."""
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n):
        label = np.zeros((10, 12, 8), np.uint8)
        label[3:7, 3:9, 2:6] = 1
        label[5:7, 3:9, 2:6] = 2
        image = (rng.normal(0, 0.1, label.shape) + 0.5 * label).astype(np.float32)
        for folder, data in (("imagesTr", image), ("labelsTr", label)):
            img = nib.Nifti1Image(data, np.diag([1.0, 1.5, 2.0, 1.0]))
            img.header.set_zooms((1.0, 1.5, 2.0))
            (root / folder).mkdir(parents=True, exist_ok=True)
            nib.save(img, str(root / folder / f"case_{i}.nii.gz"))
        entries.append(
            {"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"}
        )
    meta = {"labels": {"0": "background", "1": "anterior", "2": "posterior"}, "training": entries}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_msd_volumes_are_reported_in_mm_without_axon_hours(tmp_path: Path) -> None:
    overrides = {
        "data.source": str(_msd(tmp_path / "msd")),
        "data.spacing": None,
        "data.patch_size": 8,
        "data.n_initial": 2,
        "data.n_pool": 3,
        "data.n_val": 1,
        "data.n_test": 2,
        "model.depth": 2,
        "model.base_filters": 4,
        "train.epochs": 2,
        "train.validate_every": 2,
        "scoring.mc_samples": 2,
        "loop.strategies": "random,std_mean",
        "loop.iterations": 1,
        "loop.repetitions": 1,
        "loop.upper_bound": False,
        "train.precision": "fp32",
    }
    out = _quiet(with_overrides(preset("cpu-3d"), overrides), tmp_path / "run")
    text = _text(write_report(out).read_text())
    assert "8³-voxel samples (whole volumes cropped or padded) at 1 x 1.5 x 2 mm spacing" in text
    assert "µm" not in text
    assert "Annotation hours are left out" in text and "this run has volumes" in text
    assert main(["report", str(out), "--minutes-per-axon", "3"]) == 2
    assert main(["report", str(out), "--minutes-per-patch", "6"]) == 0
    rows = _rows(out / "report" / "verdict_per_repetition.csv")
    assert [float(r["hours_budget"]) for r in rows] == pytest.approx([0.1] * len(rows))
