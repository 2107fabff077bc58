"""A synthetic 3D phantom with exact multi-class labels (hippocampus-like, for tests).

Each volume holds one ellipsoidal structure, split along its long axis into ``classes - 1``
parts (label 1 = the "anterior" end, ..., like MSD hippocampus), in a noisy background. The
parts differ slightly in brightness, the structure is blurred and noise is added, so a
network must use shape and context, not a single threshold.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from activeseg.data.volumes import Volume
from activeseg.errors import UserError


def make_volume_phantom(
    n_volumes: int = 16,
    shape: tuple[int, int, int] = (20, 24, 20),
    classes: int = 3,
    seed: int = 0,
    noise: float = 0.08,
) -> list[Volume]:
    """``n_volumes`` volumes ``shape`` (voxels of 1 mm), labels ``0 .. classes - 1``.

    Intensities are float32 in about [0, 1]; the structure's centre, semi-axes (25-40 % of
    each side) and orientation of its long axis (X or Y) are drawn per volume from
    ``np.random.default_rng(seed)``.
    """
    if classes < 2:
        raise UserError(f"a phantom needs at least 2 classes, got {classes}")
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    volumes = []
    for i in range(n_volumes):
        size = np.asarray(shape, dtype=np.float64)
        centre = size / 2 + rng.uniform(-0.1, 0.1, 3) * size
        radii = rng.uniform(0.2, 0.3, 3) * size
        long_axis = int(rng.integers(2))
        radii[long_axis] = size[long_axis] * rng.uniform(0.3, 0.38)
        offset = (grid - centre[:, None, None, None]) / radii[:, None, None, None]
        inside = (offset**2).sum(0) <= 1.0
        position = np.clip((offset[long_axis] + 1) / 2, 0, 1 - 1e-9)  # 0 .. 1 along the axis
        part = 1 + np.floor(position * (classes - 1)).astype(np.int64)
        mask = np.where(inside, part, 0).astype(np.uint8)
        brightness = np.where(mask > 0, 0.55 + 0.15 * (mask - 1) / max(classes - 2, 1), 0.25)
        image = ndimage.gaussian_filter(brightness, 0.8) + rng.normal(0, noise, shape)
        volumes.append(Volume(f"phantom_{i:03d}", image.astype(np.float32), mask, (1.0, 1.0, 1.0)))
    return volumes
