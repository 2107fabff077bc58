"""Candidate regions of a project: the model's windows mapped back to the images' pixels.

The model works at ``data.pixel_size``; a region is a rectangle in an image's *original*
pixels. Candidate windows are the ``data.patch_size`` windows of a centred grid over each
resampled image (:func:`activeseg.data.patches.tile`); a window whose region overlaps an
annotated or pending region is never offered again.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from activeseg.annotation.state import Region
from activeseg.data.patches import PatchSet, tile
from activeseg.data.sources import Sample


def window_region(
    name: str, row: int, col: int, scale: float, patch_size: int, shape: tuple[int, int]
) -> Region | None:
    """The original-pixel region of the resampled window at ``(row, col)`` of image ``name``
    (``shape`` its original ``(H, W)``; ``scale`` resampled pixels per original pixel); its
    side ``ceil(P / scale)`` resamples back to at least ``P`` pixels. ``None`` if the image
    is smaller than that."""
    size = math.ceil(patch_size / scale - 1e-9)
    h, w = shape
    if size > min(h, w):
        return None
    return Region(
        name, min(round(row / scale), h - size), min(round(col / scale), w - size), size, size
    )


def free_windows(
    samples: Sequence[Sample],
    patch_size: int,
    scales: dict[str, float],
    shapes: dict[str, tuple[int, int]],
    taken: Sequence[Region],
) -> tuple[PatchSet, list[Region]]:
    """The windows of ``samples`` (normalised images at the model's pixel size) whose regions
    overlap none of ``taken``, and those regions (in the windows' order)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # images smaller than a patch simply give none
        windows = tile(samples, patch_size)
    keep, regions = [], []
    for index, (source, (row, col)) in enumerate(zip(windows.source, windows.origin, strict=True)):
        name = windows.names[source]
        region = window_region(name, int(row), int(col), scales[name], patch_size, shapes[name])
        if region is not None and not any(region.overlaps(t) for t in taken):
            keep.append(index)
            regions.append(region)
    return windows.subset(np.asarray(keep, dtype=np.int64)), regions
