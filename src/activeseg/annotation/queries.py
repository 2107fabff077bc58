"""Queries on disk: what a query writes for the annotator, and how corrected masks come back.

For a query ``<id>`` the folder ``to_annotate/`` holds ``<id>.png`` (the crop),
``<id>_seg-myelin-pred.png`` (the model's pre-annotation to correct),
``<id>_uncertainty.png`` (the MC std as a heat map over the crop), ``<id>_uncertainty.tif``
(the std itself, float32, at the crop's size) and ``<id>.json``; the annotator saves
``<id>_seg-myelin-manual.png``. With several classes (``data.labels``, e.g. axon and
myelin) there is one pre-annotation and one mask per class, AxonDeepSeg's way:
``<id>_seg-axon-pred.png`` / ``<id>_seg-axon-manual.png``, ``<id>_seg-myelin-...``
(:class:`~activeseg.annotation.masks.MaskNames`; reading them back is
:mod:`activeseg.annotation.masks`). Importing checks each mask (readable, the crop's size,
binary) and moves the query's files to ``to_annotate/imported/``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from activeseg.annotation.masks import MaskNames
from activeseg.annotation.state import HEATMAP_SUFFIX, Query
from activeseg.data.images import write_mask_png
from activeseg.files import atomic_write_bytes, atomic_write_text


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
    labels: np.ndarray,
    std: np.ndarray,
    names: MaskNames,
    pixel_size: float | None,
) -> None:
    """The files of ``query`` in ``folder``: the ``crop`` ``[h, w]`` (in [0, 1]), its
    pre-annotation from the predicted ``labels`` ``[h, w]`` (one mask per class), the
    heat map and float32 map of ``std`` ``[h, w]``, and the JSON (naming the masks the
    annotator saves)."""
    write_png(folder / f"{query.id}.png", np.round(crop * 255).astype(np.uint8))
    for k, suffix in enumerate(names.pred, start=1):
        write_mask_png(folder / f"{query.id}{suffix}.png", (labels == k).astype(np.uint8))
    write_png(folder / f"{query.id}{HEATMAP_SUFFIX}.png", heatmap_overlay(crop, std))
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, std.astype(np.float32))
    atomic_write_bytes(folder / f"{query.id}{HEATMAP_SUFFIX}.tif", buffer.getvalue())
    info = {
        **dataclasses.asdict(query),
        "mask_file": f"{query.id}{names.manual[0]}.png",  # the one of a binary project
        "mask_files": [f"{query.id}{suffix}.png" for suffix in names.manual],
        "pixel_size": pixel_size,
        "std_max": float(std.max()),
    }
    atomic_write_text(folder / f"{query.id}.json", json.dumps(info, indent=1))


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


def move_query_files(folder: Path, qid: str) -> None:
    """Move ``folder/<qid>*`` into ``folder/imported/`` (replacing older copies)."""
    target = folder / "imported"
    target.mkdir(exist_ok=True)
    for path in folder.glob(f"{qid}*"):
        if path.is_file():
            shutil.move(str(path), str(target / path.name))
