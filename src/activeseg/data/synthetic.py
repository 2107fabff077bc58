"""``data.source = synthetic``: the phantom a data config asks for, with any preset.

The phantoms are generated, so they are made to fit the config rather than the other way
round: as many source images (volumes) as the split by source image needs, images at the
config's pixel size and at least one patch wide. When the default phantom (12 images of
256² px at 0.1 µm; 16 volumes of 20 x 24 x 20 voxels of 1 mm) already suffices, it is
exactly that phantom, so small configs (the demo, the tests) keep their data.

``data.n_pool = none`` ("every remaining patch") has no size of its own here: the phantom
then holds ``n_val + n_test`` pool patches, or more when the default phantom gives more.
"""

from __future__ import annotations

import math

from activeseg.config import DataConfig
from activeseg.data.patches import sources_needed
from activeseg.data.phantom import make_phantom
from activeseg.data.sources import Sample
from activeseg.data.volume_phantom import make_volume_phantom
from activeseg.data.volumes import Volume
from activeseg.runtime import derive_seed

SYNTHETIC = "synthetic"
PHANTOM_IMAGES = 12  # the default 2D phantom: images ...
PHANTOM_SIZE = 256  # ... of this side, pixels ...
PHANTOM_PIXEL_SIZE = 0.1  # ... at this pixel size, µm
PHANTOM_VOLUMES = 16  # the default 3D phantom: volumes ...
PHANTOM_SHAPE = (20, 24, 20)  # ... of this shape, voxels of 1 mm


def _pool(cfg: DataConfig) -> int:
    return cfg.n_pool if cfg.n_pool is not None else cfg.n_val + cfg.n_test


def phantom_layout(cfg: DataConfig) -> tuple[int, int, float]:
    """``(n_images, side, pixel_size)`` of the 2D phantom of ``cfg``.

    Rendered at ``data.source_pixel_size`` (``--pixel-size``) if given, else at
    ``data.pixel_size``, else at 0.1 µm (so usually no resampling); the side is at least
    256 px and, after resampling to ``data.pixel_size``, one ``patch_size``; at least 12
    images, more when the split needs them (:func:`~activeseg.data.patches.sources_needed`).
    """
    pixel = cfg.source_pixel_size or cfg.pixel_size or PHANTOM_PIXEL_SIZE
    scale = pixel / (cfg.pixel_size or pixel)  # resampled side = round(side * scale)
    side = max(PHANTOM_SIZE, math.ceil(cfg.patch_size / scale))
    while round(side * scale) < cfg.patch_size:
        side += 1
    per_image = (round(side * scale) // cfg.patch_size) ** 2
    needed = sources_needed(per_image, cfg.n_initial, cfg.n_val, cfg.n_test, _pool(cfg))
    return max(PHANTOM_IMAGES, needed), side, pixel


def synthetic_images(cfg: DataConfig) -> list[Sample]:
    """The 2D axon-myelin phantom of :func:`phantom_layout`, seeded by :func:`phantom_seed`,
    with the classes of ``data.labels`` (axon and/or myelin; default the myelin mask)."""
    n_images, side, pixel = phantom_layout(cfg)
    return make_phantom(n_images, side, pixel, seed=phantom_seed(cfg), labels=cfg.labels)


def phantom_seed(cfg: DataConfig) -> int:
    """The phantom's seed, derived from ``data.split_seed`` with its own purpose: the split
    permutes the images with ``split_seed`` itself, and the phantom chose its hard images
    with the same first draw, so every test set held exactly the hard images."""
    return derive_seed(cfg.split_seed, "phantom")


def volume_count(cfg: DataConfig) -> int:
    """Volumes of the 3D phantom of ``cfg``: at least 16, more when the split needs them
    (one sample per volume with ``data.whole_volume``, else the cubes of a resampled
    phantom volume; a cube larger than the volume is left to
    :func:`~activeseg.data.volumes.volume_patches` to report)."""
    if cfg.whole_volume:
        per_volume = 1
    else:
        spacing = cfg.spacing or 1.0
        shape = [max(1, round(n / spacing)) for n in PHANTOM_SHAPE]
        per_volume = math.prod(n // cfg.patch_size for n in shape)
        if per_volume == 0:
            return PHANTOM_VOLUMES
    needed = sources_needed(per_volume, cfg.n_initial, cfg.n_val, cfg.n_test, _pool(cfg))
    return max(PHANTOM_VOLUMES, needed)


def synthetic_volumes(cfg: DataConfig) -> list[Volume]:
    """The 3D phantom of :func:`volume_count` volumes, labels ``0 .. num_classes - 1``."""
    return make_volume_phantom(
        volume_count(cfg), PHANTOM_SHAPE, classes=cfg.num_classes, seed=phantom_seed(cfg)
    )
