"""Queries on disk: what a query writes for the annotator, and how corrected masks come back.

For a query ``<id>`` the folder ``to_annotate/`` holds ``<id>.png`` (the crop),
``<id>_seg-myelin-pred.png`` (the model's pre-annotation to correct),
``<id>_uncertainty.png`` (the MC std as a heat map over the crop) and ``<id>.json``; the
annotator saves ``<id>_seg-myelin-manual.png``. Importing checks each mask (readable, the
crop's size, binary) and moves the query's files to ``to_annotate/imported/``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from activeseg.annotation.state import HEATMAP_SUFFIX, PRED_SUFFIX, Query, Region
from activeseg.data.images import IMAGE_SUFFIXES, read_mask, write_mask_png
from activeseg.data.patches import resize
from activeseg.errors import UserError
from activeseg.files import atomic_write_bytes, atomic_write_text
from activeseg.metrics import confusion, summarize


@dataclass(frozen=True)
class ImportResult:
    """``imported``: query ids stored; ``rejected``: (file, reason); ``waiting``: query ids
    without a mask file yet."""

    imported: list[str] = field(default_factory=list)
    rejected: list[tuple[Path, str]] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)


def write_query(
    folder: Path,
    query: Query,
    crop: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    threshold: float,
    mask_file: str,
    pixel_size: float | None,
) -> None:
    """The files of ``query`` in ``folder``: the ``crop`` ``[h, w]`` (in [0, 1]), its
    pre-annotation (``mean`` >= ``threshold``) and heat map (``std``), both window-sized
    maps resized to the crop, and the JSON (``mask_file``: the name the annotator saves)."""
    shape = crop.shape
    write_png(folder / f"{query.id}.png", np.round(crop * 255).astype(np.uint8))
    write_mask_png(
        folder / f"{query.id}{PRED_SUFFIX}.png",
        (resize(mean, shape) >= threshold).astype(np.uint8),
    )
    write_png(folder / f"{query.id}{HEATMAP_SUFFIX}.png", heatmap_overlay(crop, resize(std, shape)))
    info = {
        **dataclasses.asdict(query),
        "mask_file": mask_file,
        "pixel_size": pixel_size,
        "std_max": float(std.max()),
    }
    atomic_write_text(folder / f"{query.id}.json", json.dumps(info, indent=1))


def pre_dice(folder: Path, query: Query, mask: np.ndarray) -> float | None:
    """Dice of the query's pre-annotation against the corrected ``mask`` (``None`` if the
    pre-annotation file is gone)."""
    path = folder / f"{query.id}{PRED_SUFFIX}.png"
    if not path.is_file():
        return None
    pred = torch.from_numpy(read_mask(path).reshape(1, -1)).bool()
    return summarize(confusion(pred, torch.from_numpy(mask.reshape(1, -1)).bool()))["dice"]


def heatmap_overlay(image: np.ndarray, std: np.ndarray, scale: float = 0.5) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]``: the gray ``image`` ``[H, W]`` (in [0, 1]) with the MC std
    ``[H, W]`` in the ``inferno`` colour map blended over it (alpha = 0.7 * std / scale;
    std 0.5 is the largest a probability can have)."""
    from matplotlib import colormaps

    level = np.clip(std / scale, 0.0, 1.0)[..., None]
    colour = colormaps["inferno"](level[..., 0])[..., :3]
    alpha = 0.7 * np.sqrt(level)
    rgb = image[..., None] * (1 - alpha) + colour * alpha
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def write_png(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


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


def move_query_files(folder: Path, qid: str) -> None:
    """Move ``folder/<qid>*`` into ``folder/imported/`` (replacing older copies)."""
    target = folder / "imported"
    target.mkdir(exist_ok=True)
    for path in folder.glob(f"{qid}*"):
        if path.is_file():
            shutil.move(str(path), str(target / path.name))
