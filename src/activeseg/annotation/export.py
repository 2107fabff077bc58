"""Annotations out of a project, in the formats other tools train on.

``activeseg export-labels PROJECT --format nnunet|bids --out DIR``:

* **nnunet** — an nnU-Net v2 raw dataset ``DIR/Dataset<ID>_<name>/``: ``dataset.json``,
  ``imagesTr/<case>_0000.png`` (the whole image, 8-bit, or 16-bit when it has more levels)
  and ``labelsTr/<case>.png``: 0 = background, 1 .. C-1 the classes where annotated, and
  nnU-Net's **ignore label** C (declared as ``"ignore"``, the highest label, as nnU-Net
  requires) wherever nothing is annotated, so a partly annotated image trains only on its
  annotated regions. Every image with an annotation (held-out images included) is a
  training case. PNG holds no pixel size: ``dataset.json`` lists each case's in
  ``activeseg_pixel_size_um`` (nnU-Net ignores the key); images of different pixel sizes
  should be resampled to one before nnU-Net trains on them.
* **bids** — a BIDS microscopy dataset as AxonDeepSeg reads it:
  ``sub-<s>/micr/sub-<s>_sample-<x>_<modality>.png`` with a ``PixelSize`` sidecar and
  ``derivatives/labels/sub-<s>/micr/<stem>_seg-<class>-manual.png`` (0/255) per class
  (with axon and myelin also ``_seg-axonmyelin-manual.png``: axon 255, myelin 127). BIDS
  has no ignore label, so a whole annotated image (the masks given at ``init``) is exported
  whole and each annotated region as its own sample cropped from its image (sample
  ``<x>q<NNNN>`` for query ``q<NNNN>``). A project image named as BIDS
  (``sub-<s>_sample-<x>_<modality>``) keeps its subject and sample; others become samples
  of subject ``activeseg``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from activeseg import __version__
from activeseg.annotation.predict import axonmyelin
from activeseg.annotation.project import Project
from activeseg.annotation.state import Annotation
from activeseg.data.images import write_gray_png, write_mask_png
from activeseg.errors import UserError
from activeseg.files import atomic_write_text

FORMATS = ("nnunet", "bids")
_BIDS_NAME = re.compile(r"^sub-([A-Za-z0-9]+)_sample-([A-Za-z0-9]+)(?:_.*)?$")


@dataclass(frozen=True)
class Exported:
    """What :func:`export_labels` wrote: the dataset folder and its cases (images)."""

    folder: Path
    cases: list[str]


def export_labels(
    project: Project, out: Path, fmt: str, *, dataset_id: int = 500, name: str = "activeseg"
) -> Exported:
    """Write the annotations of ``project`` in format ``fmt`` (:data:`FORMATS`) under
    ``out`` (module docstring); ``dataset_id`` and ``name`` name an nnU-Net dataset.

    Raises:
        UserError: an unknown format, nothing annotated, or a bad dataset id or name.
    """
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    annotations = project.state().annotations
    if not annotations:
        raise UserError(f"{project.root} has no annotation to export yet")
    if fmt == "nnunet":
        return _nnunet(project, annotations, Path(out), dataset_id, name)
    return _bids(project, annotations, Path(out))


def _by_image(annotations: tuple[Annotation, ...]) -> dict[str, list[Annotation]]:
    out: dict[str, list[Annotation]] = {}
    for a in annotations:
        out.setdefault(a.region.image, []).append(a)
    return dict(sorted(out.items()))


def _stored_png(image: np.ndarray) -> np.ndarray:
    """An image ``[H, W]`` in [0, 1] as uint8 if it holds only 8-bit levels, else uint16."""
    eight = np.round(image * 255)
    if np.allclose(eight, image * 255, atol=1e-3):
        return eight.astype(np.uint8)
    return np.round(image * 65535).astype(np.uint16)


def _nnunet(
    project: Project, annotations: tuple[Annotation, ...], out: Path, dataset_id: int, name: str
) -> Exported:
    if not 1 <= dataset_id <= 999 or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise UserError(
            f"the nnU-Net dataset id must be 1 to 999 and its name letters, digits, - or _; "
            f"got {dataset_id} and {name!r}"
        )
    folder = out / f"Dataset{dataset_id:03d}_{name}"
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"{folder} exists and is not empty; choose another --out or id")
    classes = project.config.data.class_names
    ignore = len(classes) + 1
    cases, sizes = [], {}
    for image_name, found in _by_image(annotations).items():
        image = project.image(image_name)
        labels = np.full(image.shape, ignore, dtype=np.uint8)
        for a in found:
            region = a.region
            rows = slice(region.row, region.row + region.height)
            labels[rows, region.col : region.col + region.width] = project.read_annotation(a)
        case = re.sub(r"[^A-Za-z0-9_-]", "_", image_name)
        write_gray_png(folder / "imagesTr" / f"{case}_0000.png", _stored_png(image))
        write_gray_png(folder / "labelsTr" / f"{case}.png", labels)
        cases.append(case)
        sizes[case] = project.entry(image_name).pixel_size
    dataset = {
        "channel_names": {"0": project.config.data.modality},
        "labels": {"background": 0, **{c: k for k, c in enumerate(classes, 1)}, "ignore": ignore},
        "numTraining": len(cases),
        "file_ending": ".png",
        "name": name,
        "description": f"annotations of the activeseg project {project.root.name}",
        "activeseg_pixel_size_um": sizes,
    }
    atomic_write_text(folder / "dataset.json", json.dumps(dataset, indent=1))
    return Exported(folder, cases)


def _bids_names(image_name: str) -> tuple[str, str]:
    """(subject, sample) labels of a project image."""
    match = _BIDS_NAME.match(image_name)
    if match:
        return match.group(1), match.group(2)
    return "activeseg", re.sub(r"[^A-Za-z0-9]", "", image_name) or "image"


def _bids(project: Project, annotations: tuple[Annotation, ...], out: Path) -> Exported:
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose a new --out")
    d = project.config.data
    derivative = out / "derivatives" / "labels"
    description = {"Name": f"activeseg project {project.root.name}", "BIDSVersion": "1.8.0"}
    atomic_write_text(out / "dataset_description.json", json.dumps(description, indent=1))
    generated = {
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "activeseg", "Version": __version__}],
    }
    atomic_write_text(
        derivative / "dataset_description.json", json.dumps({**description, **generated}, indent=1)
    )
    rows, cases = [], []
    for image_name, found in _by_image(annotations).items():
        image = project.image(image_name)
        subject, sample = _bids_names(image_name)
        for a in found:
            whole = a.region.height == image.shape[0] and a.region.width == image.shape[1]
            label = (
                sample if whole else f"{sample}{re.sub(r'[^A-Za-z0-9]', '', a.id.split('-')[0])}"
            )
            stem = f"sub-{subject}_sample-{label}_{d.modality}"
            micr = Path(f"sub-{subject}") / "micr"
            write_gray_png(out / micr / f"{stem}.png", _stored_png(a.region.crop(image)))
            size = project.entry(image_name).pixel_size
            if size is not None:
                sidecar = {"PixelSize": [size, size], "PixelSizeUnits": "um"}
                atomic_write_text(out / micr / f"{stem}.json", json.dumps(sidecar, indent=1))
            _write_labels(derivative / micr, stem, project.read_annotation(a), d.class_names)
            rows.append(f"sample-{label}\tsub-{subject}\ttissue")
            cases.append(stem)
    atomic_write_text(
        out / "samples.tsv", "sample_id\tparticipant_id\tsample_type\n" + "\n".join(rows) + "\n"
    )
    return Exported(out, cases)


def _write_labels(folder: Path, stem: str, labels: np.ndarray, classes: tuple[str, ...]) -> None:
    """AxonDeepSeg's manual label files of a label map: one 0/255 mask per class (and the
    combined axon/myelin file when both classes are there)."""
    for k, name in enumerate(classes, start=1):
        write_mask_png(folder / f"{stem}_seg-{name}-manual.png", (labels == k).astype(np.uint8))
    if (combined := axonmyelin(labels, classes)) is not None:
        write_gray_png(folder / f"{stem}_seg-axonmyelin-manual.png", combined)


__all__ = ["FORMATS", "Exported", "export_labels"]
