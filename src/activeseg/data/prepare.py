"""Data ready for a learner: load, resample, tile, split by source image, normalise.

One normalisation rule serves simulations, projects and ``predict``: every image (or
volume) is standardised by its own mean and std (:data:`PER_IMAGE`). Brightness and contrast
differ between acquisitions: the AxonDeepSeg SEM images' mean intensity ranges from 0.3 to
0.6, and one normaliser fitted on the training sources gave a held-out Dice of 0.51 on a
darker image. Measured in docs/training-recipe.md: per-image standardisation raised the SEM
iteration-0 Dice and made whole-pool trainings agree; neutral on the hippocampus volumes.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from activeseg.config import DataConfig
from activeseg.data.patches import Normalizer, PatchSet, Split, resample, split_by_source, tile
from activeseg.data.sources import Sample, load_source
from activeseg.data.synthetic import SYNTHETIC, synthetic_images, synthetic_volumes
from activeseg.data.volumes import load_volumes, prepare_volume, volume_patches

Scales = tuple[tuple[float, ...] | None, ...]


@dataclass(frozen=True)
class Prepared:
    """Patches ready for training: ``images`` float32 ``[N, 1, P, P]`` standardised per
    source (:func:`standardize_sources`), ``masks`` uint8 ``[N, 1, P, P]``; ``scales``: per
    source image (``patches.names`` order) its pixel size after resampling, ``(µm,)``, or a
    volume's voxel spacing ``(x, y, z)`` mm; ``None`` where unknown (an image without a
    pixel size, used as it is)."""

    patches: PatchSet
    split: Split
    images: torch.Tensor
    masks: np.ndarray
    scales: Scales

    def split_record(self) -> dict[str, Any]:
        """The split as a run directory stores it (``split.json``): the patch ids of each
        set, the source images and ``data_sha256``, a digest of every patch's image and
        mask, so that a resumed run or a report notices data that changed under the same
        file names and split."""
        digest = hashlib.sha256()
        for array in (self.patches.images, self.patches.masks):
            digest.update(np.ascontiguousarray(array).tobytes())
        return {**self.split.to_dict(), "data_sha256": digest.hexdigest()}


def prepare(cfg: DataConfig) -> Prepared:
    """Load, resample, tile (or fit volumes to one shape), split by source and normalise."""
    patches, scales = _volume_patches(cfg) if cfg.spatial_dims == 3 else _image_patches(cfg)
    split = split_by_source(
        patches, cfg.n_initial, cfg.n_val, cfg.n_test, cfg.n_pool, seed=cfg.split_seed
    )
    images = torch.from_numpy(standardize_sources(patches.images, patches.source))
    return Prepared(patches, split, images, patches.masks, scales)


PER_IMAGE = {"mode": "per_image"}
"""How every model's inputs are standardised (a checkpoint's ``normalizer``): each image by
its own mean and std."""


def standardize_sources(images: np.ndarray, source: np.ndarray) -> np.ndarray:
    """``images`` ``[N, 1, *S]`` as float32, the patches of each source (``source`` ``[N]``)
    standardised by the mean and std of that source's patches together. For whole volumes
    the statistics include the padding, which the intensity window put at 0 like the
    background, so padding stays background."""
    out = np.empty(images.shape, np.float32)
    for k in np.unique(source):
        rows = source == k
        out[rows] = Normalizer.fit(images[rows])(images[rows])
    return out


def _volume_patches(cfg: DataConfig) -> tuple[PatchSet, Scales]:
    """Volumes windowed, resampled to ``cfg.spacing`` and cut into ``patch_size``-cubes."""
    if cfg.source == SYNTHETIC:
        loaded = synthetic_volumes(cfg)
    else:
        loaded = load_volumes(cfg.source, cfg.num_classes)
    volumes = [prepare_volume(v, cfg.spacing, cfg.clip, cfg.clip_percentile) for v in loaded]
    patches = volume_patches(volumes, cfg.patch_size, cfg.whole_volume)
    return patches, tuple(tuple(float(s) for s in v.spacing) for v in volumes)


def _image_patches(cfg: DataConfig) -> tuple[PatchSet, Scales]:
    """2D images resampled to ``cfg.pixel_size`` and tiled into ``patch_size`` patches."""
    if cfg.source == SYNTHETIC:
        samples = synthetic_images(cfg)
    else:
        samples = load_source(
            cfg.source,
            pixel_size=cfg.source_pixel_size,
            modality=cfg.modality,
            label_suffix=cfg.label_suffix,
            channel=cfg.channel,
            labels=cfg.labels,
        )
    unknown = [s.name for s in samples if s.pixel_size is None]
    if cfg.pixel_size is not None and unknown:
        warnings.warn(
            f"no pixel size for {len(unknown)} image(s) (e.g. {unknown[0]}): they are not "
            f"resampled to data.pixel_size={cfg.pixel_size} µm; give --pixel-size (µm per pixel "
            "of the folder's images) or --set data.pixel_size=none",
            stacklevel=2,
        )
    resampled = [resample(s, cfg.pixel_size) for s in samples]
    scales = tuple(None if s.pixel_size is None else (s.pixel_size,) for s in resampled)
    return tile(resampled, cfg.patch_size), scales


def image_normalizer(
    image: np.ndarray, pixel_size: float | None, model_pixel_size: float | None
) -> Normalizer:
    """The intensity normaliser of one image ``[H, W]`` of a project: mean and std of the
    image resampled to the model's pixel size (:data:`PER_IMAGE`), at training, querying and
    prediction alike."""
    sample = Sample("image", image, np.zeros(image.shape, np.uint8), pixel_size)
    return Normalizer.fit(resample(sample, model_pixel_size).image)
