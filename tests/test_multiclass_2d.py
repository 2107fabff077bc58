"""2D multi-class segmentation (``data.labels=axon,myelin``): settings, reading per-class
masks into label maps, resampling and augmenting label maps, multi-class uncertainty
quality, a simulation, and a project from init to AxonDeepSeg's three predict files."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PROJECT_SETTINGS, TINY_OVERRIDES
from PIL import Image

from activeseg.annotation import Project
from activeseg.annotation.masks import MaskNames
from activeseg.cli import main
from activeseg.config import with_overrides
from activeseg.data.images import read_labels, read_mask
from activeseg.data.patches import resize_labels
from activeseg.data.phantom import make_phantom
from activeseg.data.sources import combine_masks, load_source
from activeseg.errors import UserError
from activeseg.files import read_records
from activeseg.metrics import uncertainty_quality
from activeseg.presets import preset
from activeseg.report.verdict import count_axons
from activeseg.runtime import torch_generator
from activeseg.simulation import simulate
from activeseg.train import augment
from activeseg.validation import validate

REAL_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "data_axondeepseg_sem"
AXON, MYELIN = 1, 2


def test_data_labels_sets_the_classes_and_is_checked() -> None:
    config = with_overrides(preset("cpu"), {"data.labels": "axon,myelin"})
    assert config.data.num_classes == 3 and config.data.labels == ("axon", "myelin")
    assert config.data.class_names == ("axon", "myelin")
    assert config.data.mask_suffixes == ("_seg-axon-manual", "_seg-myelin-manual")
    validate(config)  # test_uncertainty (on in the cpu preset) works for several classes
    assert preset("cpu").data.class_names == ("myelin",)
    assert preset("cpu-3d").data.class_names == ("class1", "class2")
    for overrides, match in [
        ({"data.labels": "axon,myelin", "data.num_classes": 4}, "num_classes must be 3"),
        ({"data.num_classes": 3}, "2D images, the classes by name"),
        ({"data.labels": "axon,axon"}, "distinct names"),
        ({"data.labels": "axon,my elin"}, "letters and digits"),
        ({"data.labels": "axon,myelin", "data.label_suffix": "seg-ax"}, "leave data.label_suffix"),
    ]:
        with pytest.raises(UserError, match=match):
            validate(with_overrides(preset("cpu"), overrides))
    with pytest.raises(UserError, match="volumes take their classes from the label files"):
        validate(with_overrides(preset("cpu-3d"), {"data.labels": "a,b", "data.num_classes": 3}))


def test_combine_masks_later_class_wins_and_large_overlaps_warn() -> None:
    axon = np.array([[1, 1, 0, 0]], np.uint8)
    myelin = np.array([[0, 1, 1, 0]], np.uint8)
    with pytest.warns(UserWarning, match="overlap on 1 pixels"):
        labels = combine_masks([axon, myelin], "img")
    np.testing.assert_array_equal(labels, [[AXON, MYELIN, MYELIN, 0]])
    big = np.zeros((100, 100), np.uint8)
    big[:50] = 1
    edge = big.copy()
    edge[49, 0] = 0
    edge[50, 0] = 1  # one pixel of 5,000 shared: AxonDeepSeg's sub-rat2 has 9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        combine_masks([big, 1 - edge], "img")


def _bids(root: Path, samples: list, labels: tuple[str, ...] = ("axon", "myelin")) -> None:
    for s in samples:
        sub = s.name.replace("-", "")
        micr = root / f"sub-{sub}" / "micr"
        micr.mkdir(parents=True, exist_ok=True)
        stem = f"sub-{sub}_sample-1_SEM"
        Image.fromarray(np.round(s.image * 255).astype(np.uint8)).save(micr / f"{stem}.png")
        (micr / f"{stem}.json").write_text(json.dumps({"PixelSize": [0.1, 0.1]}))
        derived = root / "derivatives" / "labels" / f"sub-{sub}" / "micr"
        derived.mkdir(parents=True, exist_ok=True)
        for k, name in enumerate(labels, start=1):
            mask = ((s.mask == k) * 255).astype(np.uint8)
            Image.fromarray(mask).save(derived / f"{stem}_seg-{name}-manual.png")


def test_bids_and_folder_sources_read_one_mask_per_class(tmp_path: Path) -> None:
    samples = make_phantom(n_images=2, size=64, seed=4, labels=("axon", "myelin"))
    _bids(tmp_path / "bids", samples)
    loaded = load_source(str(tmp_path / "bids"), labels=("axon", "myelin"))
    for got, want in zip(loaded, samples, strict=True):
        np.testing.assert_array_equal(got.mask, want.mask)
    binary = load_source(str(tmp_path / "bids"), label_suffix="seg-myelin-manual")
    np.testing.assert_array_equal(binary[0].mask, samples[0].mask == MYELIN)
    swapped = load_source(str(tmp_path / "bids"), labels=("myelin", "axon"))
    np.testing.assert_array_equal(swapped[0].mask == 1, samples[0].mask == MYELIN)
    first = next((tmp_path / "bids" / "derivatives").rglob("*_seg-axon-manual.png"))
    first.unlink()
    with pytest.warns(UserWarning, match="seg-axon-manual.png under derivatives/labels; image"):
        assert len(load_source(str(tmp_path / "bids"), labels=("axon", "myelin"))) == 1

    folder = tmp_path / "folder"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for s in samples:
        Image.fromarray(np.round(s.image * 255).astype(np.uint8)).save(
            folder / "images" / f"{s.name}.png"
        )
        for k, name in enumerate(("axon", "myelin"), start=1):
            Image.fromarray(((s.mask == k) * 255).astype(np.uint8)).save(
                folder / "masks" / f"{s.name}_seg-{name}-manual.png"
            )
    loaded = load_source(str(folder), labels=("axon", "myelin"))
    np.testing.assert_array_equal(loaded[1].mask, samples[1].mask)
    (folder / "masks" / f"{samples[1].name}_seg-myelin-manual.png").unlink()
    with pytest.raises(UserError, match="images without a mask: phantom-001.png"):
        load_source(str(folder), labels=("axon", "myelin"))


def test_label_maps_resample_to_their_own_labels() -> None:
    mask = np.zeros((40, 40), np.uint8)
    mask[8:32, 8:32] = MYELIN
    mask[16:24, 16:24] = AXON
    small = resize_labels(mask, (20, 20))
    assert set(np.unique(small)) == {0, AXON, MYELIN}  # label arithmetic would give 1.5 -> 1
    assert np.count_nonzero(small == AXON) == 16 and np.count_nonzero(small > 0) == 144
    binary = (mask > 0).astype(np.uint8)
    np.testing.assert_array_equal(resize_labels(binary, (20, 20)), small > 0)


def test_augmentation_warps_label_maps_by_nearest_neighbour() -> None:
    masks = torch.zeros(4, 1, 32, 32)
    masks[:, :, 8:24, 8:24] = MYELIN
    images = torch.rand(4, 1, 32, 32, generator=torch_generator(0))
    _, warped = augment(images, masks, torch_generator(1), labels=True)
    assert set(warped.unique().tolist()) == {0.0, float(MYELIN)}
    _, wrong = augment(images, masks, torch_generator(1))  # the binary path: myelin -> 1
    assert set(wrong.unique().tolist()) == {0.0, 1.0}
    _, binary = augment(images, masks / MYELIN, torch_generator(1))  # the same warp
    assert abs(int((warped > 0).sum()) - int(binary.sum())) <= 0.02 * int(binary.sum())


def test_uncertainty_quality_of_several_classes_by_hand() -> None:
    # 4 pixels; classes background, axon, myelin; target 0, 1, 2, 2
    mean = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.2, 0.5, 0.3]])
    mean = mean.T.reshape(1, 3, 2, 2)
    std = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.1, 0.1], [0.2, 0.2, 0.2], [0.3, 0.3, 0.3]])
    std = std.T.reshape(1, 3, 2, 2)
    target = torch.tensor([0, 1, 2, 2]).reshape(1, 1, 2, 2)
    out = uncertainty_quality(mean, std, target)
    assert out["uncertainty_auroc"] == 1.0  # the one wrong pixel (the last) has the top std
    # foreground probabilities pooled: axon 0.1 .7 .2 .5 vs 0 1 0 0; myelin .1 .1 .7 .3 vs 0 0 1 1
    counts = np.array(out["reliability"]["counts"])
    assert counts.sum() == 8
    expected = (3 * 0.1 + 0.2 + 0.5 + 0.3 + 0.3 + 0.7) / 8  # |frac - mean| summed per bin / 8
    assert out["ece"] == pytest.approx(expected)


def test_count_axons_counts_myelinated_axons_of_axon_myelin_masks() -> None:
    samples = make_phantom(n_images=2, size=128, seed=5)
    both = make_phantom(n_images=2, size=128, seed=5, labels=("axon", "myelin"))
    myelin_only = np.stack([s.mask[None] for s in samples])
    labels = np.stack([s.mask[None] for s in both])
    assert (labels == MYELIN).sum() == myelin_only.sum()
    np.testing.assert_array_equal(count_axons(labels), count_axons(myelin_only))
    assert count_axons(labels).min() > 3


def test_annotation_hours_count_axons_when_the_classes_include_myelin(tmp_path: Path) -> None:
    from activeseg.report.annotation import AXON as AXONS
    from activeseg.report.annotation import annotation_cost

    (tmp_path / "derivatives").mkdir()
    bids = with_overrides(preset("cpu"), {"data.source": str(tmp_path)})
    cost, _ = annotation_cost(with_overrides(bids, {"data.labels": "axon,myelin"}))
    assert cost is not None and cost.unit == AXONS and "_seg-axon-manual" in cost.why
    cost, _ = annotation_cost(with_overrides(bids, {"data.labels": "axon"}))
    assert cost is None  # axons alone: not the paper's myelinated-axon count


TINY = {
    **TINY_OVERRIDES,
    "data.labels": "axon,myelin",
    "loop.strategies": "random,std_edt,entropy",
    "loop.repetitions": 1,
    "loop.iterations": 1,
}


def test_a_multi_class_simulation_records_per_class_metrics(tmp_path: Path) -> None:
    config = with_overrides(preset("demo"), TINY)
    out = simulate(config, tmp_path / "run", progress=False, log=lambda line: None)
    for name in ("random", "std_edt", "entropy"):
        records = read_records(out / f"records-{name}-rep0.jsonl")
        assert [r["iteration"] for r in records] == [0, 1]
        for r in records:
            classes = (r["test_dice_class1"], r["test_dice_class2"])
            assert r["test_dice"] == pytest.approx(np.mean(classes))
            assert 0 <= r["test_ece"] <= 1 and r["test_uncertainty_auroc"] is not None
    from activeseg.report import write_report

    html = write_report(out)
    assert (html.parent / "learning_dice_class2.png").is_file()


SETTINGS = [*PROJECT_SETTINGS, "data.labels=axon,myelin"]


def test_a_mask_suffix_for_a_multi_class_project_is_an_error_naming_the_mask_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(images / "im0.png")
    project = tmp_path / "proj"
    args = ["init", str(project), "--images", str(images), "--preset", "demo"]
    labels = ["--set", "data.labels=axon,myelin"]
    assert main([*args, *labels, "--mask-suffix", "_label"]) == 2
    err = capsys.readouterr().err
    assert "--mask-suffix is for binary masks" in err
    assert "<stem>_seg-<label>-manual (here _seg-axon-manual, _seg-myelin-manual)" in err
    assert not project.exists()
    with pytest.raises(UserError, match="--mask-suffix is for binary masks"):
        MaskNames.of(("axon",), "_label")
    assert MaskNames.of((), "_label").manual == ("_label",)  # binary masks take it


def test_a_multi_class_project_from_init_to_axondeepseg_files(tmp_path: Path) -> None:
    samples = make_phantom(n_images=4, size=96, seed=8, labels=("axon", "myelin"))
    samples = [dataclasses.replace(s, name=f"im{i}") for i, s in enumerate(samples)]
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for s in samples:
        Image.fromarray(np.round(s.image * 255).astype(np.uint8)).save(images / f"{s.name}.png")
        if s.name in ("im0", "im3"):
            for k, name in enumerate(("axon", "myelin"), start=1):
                mask = ((s.mask == k) * 255).astype(np.uint8)
                Image.fromarray(mask).save(masks / f"{s.name}_seg-{name}-manual.png")
    project = tmp_path / "proj"
    base = ["--preset", "demo", *(a for s in SETTINGS for a in ("--set", s))]
    assert main(["init", str(project), "--images", str(images), "--masks", str(masks),
                 "--holdout", "im3", *base]) == 0  # fmt: skip
    stored = read_labels(project / "annotations" / "im0_seg-labels.png")
    np.testing.assert_array_equal(stored, samples[0].mask)
    with pytest.raises(UserError, match=r"--suffix is for binary masks.*_seg-myelin-manual"):
        Project(project).import_masks(suffix="_seg-axon-manual")

    assert main(["query", str(project), "-k", "2", "--quiet"]) == 0
    pending = sorted((project / "to_annotate").glob("q*.json"))
    assert len(pending) == 2
    for info in pending:
        q = json.loads(info.read_text())
        assert q["mask_files"] == [
            f"{q['id']}_seg-axon-manual.png",
            f"{q['id']}_seg-myelin-manual.png",
        ]
        for name in ("axon", "myelin"):
            pred = read_mask(project / "to_annotate" / f"{q['id']}_seg-{name}-pred.png")
            assert pred.shape == (32, 32)
        r = q["region"]
        truth = samples[int(r["image"][2:])].mask[
            r["row"] : r["row"] + 32, r["col"] : r["col"] + 32
        ]
        if info == pending[0]:  # the annotator saves only the axon mask of the first region
            Image.fromarray(((truth == AXON) * 255).astype(np.uint8)).save(
                project / "to_annotate" / q["mask_files"][0]
            )
            continue
        for k, file in enumerate(q["mask_files"], start=1):
            Image.fromarray(((truth == k) * 255).astype(np.uint8)).save(
                project / "to_annotate" / file
            )
    assert main(["import", str(project)]) == 2  # the half-saved region is rejected, by name
    state = json.loads((project / "state.json").read_text())
    assert len(state["annotations"]) == 3 and len(state["pending"]) == 1
    assert state["annotations"][-1]["pre_dice"] is not None

    out = tmp_path / "pred"
    assert main(["predict", str(project), str(images / "im3.png"), "--out", str(out),
                 "--quiet"]) == 0  # fmt: skip
    axon, myelin = read_mask(out / "im3_seg-axon.png"), read_mask(out / "im3_seg-myelin.png")
    combined = np.asarray(Image.open(out / "im3_seg-axonmyelin.png"))
    assert axon.shape == myelin.shape == combined.shape == (96, 96)
    assert set(np.unique(combined)) <= {0, 127, 255}
    np.testing.assert_array_equal(combined == 255, axon.astype(bool))
    np.testing.assert_array_equal(combined == 127, myelin.astype(bool))
    assert not (axon & myelin).any()
    truth = samples[3].mask
    for k, pred in ((AXON, axon), (MYELIN, myelin)):
        dice = 2 * (pred & (truth == k)).sum() / (pred.sum() + (truth == k).sum())
        assert dice > 0.5, (k, dice)


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real SEM dataset not found at {REAL_DATA}")
def test_the_axondeepseg_sem_set_gives_axon_and_myelin_label_maps() -> None:
    samples = load_source(str(REAL_DATA.resolve()), labels=("axon", "myelin"))
    assert len(samples) == 10
    for s in samples:
        axon, myelin = (s.mask == AXON).mean(), (s.mask == MYELIN).mean()
        assert 0.19 < axon < 0.36 and 0.26 < myelin < 0.41, s.name
        assert set(np.unique(s.mask)) == {0, AXON, MYELIN}
