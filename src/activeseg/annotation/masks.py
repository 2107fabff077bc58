"""A project's masks on disk: the annotator's per-class files and the stored annotations.

The annotator sees one binary mask per class (AxonDeepSeg's way: ``<id>_seg-axon-manual.png``,
``<id>_seg-myelin-manual.png``; a binary project ``<id>_seg-myelin-manual.png``), named by
:class:`MaskNames`; the project stores each annotation as one file: a 0/255 mask (binary) or a
label map ``<id>_seg-labels.png`` with values 0 .. C-1.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch

from activeseg.annotation.state import (
    HEATMAP_SUFFIX,
    LABELS_SUFFIX,
    MASK_SUFFIX,
    PRED_SUFFIX,
    Query,
    Region,
)
from activeseg.data.images import (
    IMAGE_SUFFIXES,
    read_labels,
    read_mask,
    write_gray_png,
    write_mask_png,
)
from activeseg.data.sources import combine_masks
from activeseg.errors import UserError
from activeseg.metrics import confusion, summarize_classes


@dataclass(frozen=True)
class MaskNames:
    """File-name suffixes of a project's per-class masks, class 1 first: ``manual`` (what
    the annotator saves) and ``pred`` (the pre-annotations)."""

    manual: tuple[str, ...] = (MASK_SUFFIX,)
    pred: tuple[str, ...] = (PRED_SUFFIX,)

    @classmethod
    def of(cls, labels: tuple[str, ...], mask_suffix: str = MASK_SUFFIX) -> MaskNames:
        """The names of a binary project (``mask_suffix``) or of the classes ``labels``
        (whose masks are always ``<stem>_seg-<label>-manual``: another ``mask_suffix`` is an
        error, not ignored)."""
        if not labels:
            return cls((mask_suffix,), (PRED_SUFFIX,))
        if mask_suffix != MASK_SUFFIX:
            raise UserError(binary_only("--mask-suffix", labels))
        return cls(
            tuple(f"_seg-{n}-manual" for n in labels), tuple(f"_seg-{n}-pred" for n in labels)
        )


def binary_only(option: str, labels: tuple[str, ...]) -> str:
    """The error for a mask-suffix ``option`` given to a project with the classes
    ``labels``."""
    suffixes = ", ".join(f"_seg-{n}-manual" for n in labels)
    return (
        f"{option} is for binary masks; with data.labels the masks are "
        f"<stem>_seg-<label>-manual (here {suffixes}): drop {option}"
    )


def store_annotation(root: Path, id: str, labels: np.ndarray, classes: int) -> str:
    """Store the mask (``classes`` = 2) or label map ``[h, w]`` of annotation ``id`` in the
    project ``root``; its path relative to ``root``."""
    if classes == 2:
        stored = f"annotations/{id}{MASK_SUFFIX}.png"
        write_mask_png(root / stored, labels)
    else:
        stored = f"annotations/{id}{LABELS_SUFFIX}.png"
        write_gray_png(root / stored, labels)
    return stored


def read_annotation(path: Path, classes: int) -> np.ndarray:
    """A stored mask or label map ``[h, w]`` (uint8)."""
    return read_mask(path) if classes == 2 else read_labels(path)


def read_prediction(folder: Path, qid: str, names: MaskNames) -> np.ndarray | None:
    """The pre-annotation label map ``[h, w]`` (uint8) of query ``qid`` (``None`` if a file
    is gone)."""
    paths = [folder / f"{qid}{suffix}.png" for suffix in names.pred]
    if not all(p.is_file() for p in paths):
        return None
    return combine_masks([read_mask(p) for p in paths], qid)


def read_uncertainty(folder: Path, qid: str) -> np.ndarray | None:
    """The MC std ``[h, w]`` (float32) of query ``qid`` at the crop's size, if written."""
    path = folder / f"{qid}{HEATMAP_SUFFIX}.tif"
    return tifffile.imread(path).astype(np.float32) if path.is_file() else None


def write_correction(folder: Path, qid: str, labels: np.ndarray, names: MaskNames) -> None:
    """Save the corrected label map ``[h, w]`` of query ``qid`` as the masks the annotator
    would save (one per class), for :func:`read_correction`."""
    for k, suffix in enumerate(names.manual, start=1):
        write_mask_png(folder / f"{qid}{suffix}.png", (labels == k).astype(np.uint8))


class RejectedMask(UserError):
    """A corrected mask that cannot be imported; ``path`` is the file."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


def read_correction(
    folder: Path, query: Query, names: MaskNames, crop: str
) -> tuple[np.ndarray, list[Path]] | None:
    """The corrected label map of ``query`` and its files; ``None`` while no mask of it is
    in ``folder``.

    Raises:
        RejectedMask: a mask unreadable, not of the region's size or not binary (see
            :func:`checked_mask`), or only some of the classes' masks saved.
    """
    found = [find_mask(folder, f"{query.id}{suffix}") for suffix in names.manual]
    paths = [p for p in found if p is not None]
    if not paths:
        return None
    if len(paths) < len(found):
        missing = [f"{query.id}{s}.png" for s, p in zip(names.manual, found, strict=True) if not p]
        raise RejectedMask(
            paths[0],
            f"{paths[0]}: the masks {', '.join(missing)} of the same region are missing; "
            "save one mask per class",
        )
    masks = []
    for path in paths:
        try:
            masks.append(checked_mask(path, query.region, crop))
        except UserError as exc:
            raise RejectedMask(path, str(exc)) from exc
    return combine_masks(masks, query.id), paths


def pre_dice(pred: np.ndarray | None, labels: np.ndarray, classes: int) -> float | None:
    """Dice (mean over the foreground classes 1 .. ``classes`` - 1) of a pre-annotation
    ``pred`` against the corrected ``labels`` (both ``[h, w]``); ``None`` without ``pred``."""
    if pred is None:
        return None
    p, t = torch.from_numpy(pred.reshape(1, -1)), torch.from_numpy(labels.reshape(1, -1))
    counts = torch.stack([confusion(p == k, t == k) for k in range(1, classes)], dim=1)
    return summarize_classes(counts)["dice"]


def find_mask(folder: Path, stem: str) -> Path | None:
    return next(
        (folder / f"{stem}{ext}" for ext in IMAGE_SUFFIXES if (folder / f"{stem}{ext}").is_file()),
        None,
    )


def checked_mask(path: Path, region: Region, crop: str) -> np.ndarray:
    """The {0, 1} mask of ``path``; :class:`UserError` if unreadable, not of the region's
    size, or holding intermediate levels (not a binary mask)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mask = read_mask(path)
    if mask.shape != (region.height, region.width):
        raise UserError(
            f"{path} is {mask.shape[1]}x{mask.shape[0]} pixels but its region is "
            f"{region.width}x{region.height}; save the mask at the size of the crop "
            f"{crop} (do not crop or scale it)"
        )
    if caught:
        raise UserError(
            f"{path} is not a binary mask: {caught[0].message}; save it with two values "
            "(0 and 255, myelin bright)"
        )
    return mask
