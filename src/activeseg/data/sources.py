"""Data sources: each yields :class:`Sample` objects (image, binary mask, pixel size)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Sample:
    """One source image with its mask.

    Attributes:
        name: unique identifier, e.g. ``"sub-rat1_sample-data1"``; splits group patches by it.
        image: float32 ``[H, W]`` intensities in [0, 1] (integer images divided by dtype max).
        mask: uint8 ``[H, W]``, 1 = foreground (myelin), 0 = background.
        pixel_size: isotropic pixel size in µm, or ``None`` when unknown (then no resampling).
        path: the image file, or ``None`` for generated data.
    """

    name: str
    image: np.ndarray
    mask: np.ndarray
    pixel_size: float | None
    path: Path | None = None
