"""Patches and splits: resample to one pixel size, tile into patches, split by source image.

Conventions: images are float32 in [0, 1], masks uint8 with 1 = foreground; shapes are
``[H, W]`` for a source image and ``[N, 1, P, P]`` for a patch set; pixel sizes are in µm.

Order of use::

    samples = [resample(s, pixel_size) for s in samples]
    patches = tile(samples, patch_size)
    split = split_by_source(patches, n_initial, n_val, n_test, n_pool, seed)

then each source's patches are standardised by their own statistics
(:func:`activeseg.data.prepare.standardize_sources`), so no set's statistics reach another.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from activeseg.data.sources import Sample
from activeseg.errors import UserError

# --------------------------------------------------------------------------- resampling


def _check_sample(sample: Sample) -> None:
    if sample.image.ndim != 2 or sample.image.shape != sample.mask.shape:
        raise UserError(
            f"{sample.name}: image {sample.image.shape} and mask {sample.mask.shape} must be "
            "2-D arrays of the same shape"
        )


def resize(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear, antialiased when downsampling; ``[H, W]`` → float32 ``shape``."""
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    y = F.interpolate(x, size=shape, mode="bilinear", antialias=True, align_corners=False)
    return y[0, 0].numpy()


def resample(sample: Sample, pixel_size: float | None) -> Sample:
    """Resample ``sample`` to the isotropic ``pixel_size`` (µm per pixel).

    No-op (the same object) if ``pixel_size`` or ``sample.pixel_size`` is ``None`` or they
    are equal. New shape: ``max(1, round(H * sample.pixel_size / pixel_size))`` (same for W).
    The image is interpolated bilinearly with antialiasing when downsampling; the mask by
    :func:`resize_labels` (never cubic, never an intensity operation), so it keeps its
    labels. The result carries ``pixel_size``.
    """
    _check_sample(sample)
    old = sample.pixel_size
    if pixel_size is None or old is None:
        return sample
    if pixel_size <= 0 or old <= 0:
        raise UserError(
            f"{sample.name}: pixel sizes must be > 0 µm (sample {old}, target {pixel_size})"
        )
    if old == pixel_size:
        return sample
    h, w = sample.image.shape
    shape = (max(1, round(h * old / pixel_size)), max(1, round(w * old / pixel_size)))
    with torch.no_grad():
        image = resize(sample.image, shape)
        mask = resize_labels(sample.mask, shape)
    return dataclasses.replace(sample, image=image, mask=mask, pixel_size=pixel_size)


def resize_labels(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A mask ``[H, W]`` resized to ``shape`` (uint8): a binary {0, 1} mask is the bilinear
    interpolation (:func:`resize`) of its values thresholded at >= 0.5; a label map
    (0 .. C-1) the arg-max of the same interpolation of each class's indicator (ties to the
    lower label), so every pixel keeps one of the labels and thin classes are not eroded by
    label arithmetic."""
    top = int(mask.max()) if mask.size else 0
    if top <= 1:
        return (resize(mask, shape) >= 0.5).astype(np.uint8)
    scores = np.stack([resize((mask == k).astype(np.float32), shape) for k in range(top + 1)])
    return scores.argmax(0).astype(np.uint8)


# --------------------------------------------------------------------------- tiling


@dataclass(frozen=True, eq=False)
class PatchSet:
    """Square patches cut from source images (or cubes from volumes).

    Attributes:
        images: float32 ``[N, 1, P, P]`` (volumes: ``[N, 1, P, P, P]``).
        masks: uint8, the shape of ``images``; 1 = foreground (volumes: class labels).
        source: int64 ``[N]``, index into ``names`` of the patch's source image.
        origin: int64 ``[N, 2]``, (row, col) in pixels of the patch's top-left corner in the
            (resampled) source image (volumes: ``[N, 3]`` voxels).
        names: names of the source images (a source may have no patch).
        pixel_size: µm per pixel shared by all sources, or ``None`` if unknown or mixed
            (volumes: the isotropic voxel size in mm).
    """

    images: np.ndarray
    masks: np.ndarray
    source: np.ndarray
    origin: np.ndarray
    names: tuple[str, ...]
    pixel_size: float | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if (
            self.images.ndim not in (4, 5)
            or self.images.shape[1] != 1
            or self.masks.shape != self.images.shape
            or self.source.shape != (n,)
            or self.origin.shape != (n, self.images.ndim - 2)
        ):
            raise ValueError(
                f"inconsistent PatchSet shapes: images {self.images.shape}, masks "
                f"{self.masks.shape}, source {self.source.shape}, origin {self.origin.shape}"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def patch_size(self) -> int:
        """P, the side of a patch in pixels."""
        return int(self.images.shape[-1])

    def subset(self, idx: np.ndarray | Sequence[int]) -> PatchSet:
        """The patches at integer indices (or boolean mask) ``idx``; ``names`` is kept whole."""
        index = np.asarray(idx)
        if index.dtype == np.bool_:
            index = np.flatnonzero(index)
        index = index.astype(np.int64, copy=False)
        return PatchSet(
            images=self.images[index],
            masks=self.masks[index],
            source=self.source[index],
            origin=self.origin[index],
            names=self.names,
            pixel_size=self.pixel_size,
        )


def _grid(array: np.ndarray, r0: int, c0: int, rows: int, cols: int, p: int) -> np.ndarray:
    """``rows x cols`` tiles of ``p x p`` from ``array[r0:, c0:]`` → ``[rows*cols, 1, p, p]``
    in row-major tile order."""
    crop = array[r0 : r0 + rows * p, c0 : c0 + cols * p]
    return crop.reshape(rows, p, cols, p).swapaxes(1, 2).reshape(rows * cols, 1, p, p)


def tile(samples: Sequence[Sample], patch_size: int) -> PatchSet:
    """Cut each sample into a non-overlapping grid of ``patch_size`` (P) square patches.

    An ``H x W`` image gives ``floor(H/P) * floor(W/P)`` patches in row-major order; the grid
    is centred, its top-left corner at ``((H mod P) // 2, (W mod P) // 2)``. ``source[i]`` is
    the index of the patch's sample in ``samples``. An image smaller than one patch gives none
    (one warning lists them all, unless no image gives a patch: then an error).
    ``pixel_size`` is the samples' common pixel size, else ``None``.

    Raises:
        UserError: no sample at all, duplicate names, ``patch_size < 1``, or no patch.
    """
    if patch_size < 1:
        raise UserError(f"patch size must be >= 1 pixel, got {patch_size}")
    if not samples:
        raise UserError("no source images to cut into patches")
    names = tuple(s.name for s in samples)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise UserError(f"source image names must be unique; repeated: {', '.join(dup)}")
    p = patch_size
    images, masks, sources, origins, small = [], [], [], [], []
    for index, sample in enumerate(samples):
        _check_sample(sample)
        h, w = sample.image.shape
        rows, cols = h // p, w // p
        if rows == 0 or cols == 0:
            small.append(f"{sample.name} ({h}x{w} px)")
            continue
        r0, c0 = (h - rows * p) // 2, (w - cols * p) // 2
        images.append(_grid(sample.image.astype(np.float32, copy=False), r0, c0, rows, cols, p))
        masks.append(_grid(sample.mask.astype(np.uint8, copy=False), r0, c0, rows, cols, p))
        sources.append(np.full(rows * cols, index, dtype=np.int64))
        rr, cc = np.meshgrid(r0 + p * np.arange(rows), c0 + p * np.arange(cols), indexing="ij")
        origins.append(np.stack([rr.ravel(), cc.ravel()], axis=1).astype(np.int64))
    if small and images:
        shown = ", ".join(small[:5]) + (", ..." if len(small) > 5 else "")
        warnings.warn(
            f"{len(small)} image(s) smaller than one patch of {p}x{p} px give no patch: {shown}",
            stacklevel=2,
        )
    if not images:
        largest = max(samples, key=lambda s: min(s.image.shape)).image.shape
        raise UserError(
            f"no image is as large as one patch of {p}x{p} px (largest {largest[0]}x"
            f"{largest[1]} px): lower the patch size or the pixel size (a smaller pixel size "
            "in µm gives more pixels per image)"
        )
    sizes = {s.pixel_size for s in samples}
    return PatchSet(
        images=np.concatenate(images),
        masks=np.concatenate(masks),
        source=np.concatenate(sources),
        origin=np.concatenate(origins),
        names=names,
        pixel_size=sizes.pop() if len(sizes) == 1 else None,
    )


# --------------------------------------------------------------------------- splitting

_INDEX_FIELDS = ("initial", "pool", "val", "test")
_SOURCE_FIELDS = ("train_sources", "val_sources", "test_sources")


@dataclass(frozen=True, eq=False)
class Split:
    """Disjoint patch index sets (sorted int64 ``[k]`` arrays into a :class:`PatchSet`).

    ``initial`` + ``pool`` come from the training sources only, ``val`` from the val sources,
    ``test`` from the test sources; the ``*_sources`` tuples name them (sorted), for the run
    config. Arrays are converted to sorted int64 on construction.
    """

    initial: np.ndarray
    pool: np.ndarray
    val: np.ndarray
    test: np.ndarray
    train_sources: tuple[str, ...] = ()
    val_sources: tuple[str, ...] = ()
    test_sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in _INDEX_FIELDS:
            arr = np.sort(np.asarray(getattr(self, name), dtype=np.int64).reshape(-1))
            object.__setattr__(self, name, arr)
        for name in _SOURCE_FIELDS:
            object.__setattr__(self, name, tuple(getattr(self, name)))
        every = np.concatenate([getattr(self, name) for name in _INDEX_FIELDS])
        if len(np.unique(every)) != len(every):
            raise ValueError("split sets initial/pool/val/test must be disjoint, without repeats")
        roles = [set(getattr(self, name)) for name in _SOURCE_FIELDS]
        if roles[0] & roles[1] or roles[0] & roles[2] or roles[1] & roles[2]:
            raise ValueError("a source image may belong to only one of train/val/test")

    @property
    def train(self) -> np.ndarray:
        """``initial`` ∪ ``pool`` (sorted): the only patches to fit a normaliser on."""
        return np.union1d(self.initial, self.pool)

    def to_dict(self) -> dict[str, list[int] | list[str]]:
        """Plain lists, for JSON."""
        out: dict[str, list[int] | list[str]] = {
            name: getattr(self, name).tolist() for name in _INDEX_FIELDS
        }
        out.update({name: list(getattr(self, name)) for name in _SOURCE_FIELDS})
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Split:
        """Inverse of :meth:`to_dict`."""
        return cls(
            initial=np.asarray(data["initial"], dtype=np.int64),
            pool=np.asarray(data["pool"], dtype=np.int64),
            val=np.asarray(data["val"], dtype=np.int64),
            test=np.asarray(data["test"], dtype=np.int64),
            train_sources=tuple(data.get("train_sources", ())),
            val_sources=tuple(data.get("val_sources", ())),
            test_sources=tuple(data.get("test_sources", ())),
        )

    def check(self, patches: PatchSet) -> None:
        """Raise :class:`UserError` unless this split fits ``patches``: indices in range and
        every set drawn only from its recorded sources (e.g. a split loaded for a resume)."""
        for name, role in zip(_INDEX_FIELDS, ("train", "train", "val", "test"), strict=True):
            idx = getattr(self, name)
            if len(idx) and (idx[0] < 0 or idx[-1] >= len(patches)):
                raise UserError(f"split {name!r} indexes beyond the {len(patches)} patches")
            used = {patches.names[s] for s in np.unique(patches.source[idx])}
            allowed = set(getattr(self, f"{role}_sources"))
            if not used <= allowed:
                raise UserError(
                    f"split {name!r} uses patches of {sorted(used - allowed)}, which are not "
                    f"{role} sources; the patches differ from those the split was made for"
                )


def split_by_source(
    patches: PatchSet,
    n_initial: int,
    n_val: int,
    n_test: int,
    n_pool: int | None,
    seed: int,
) -> Split:
    """Split ``patches`` by source image into initial / pool / val / test index sets.

    Source images (those with at least one patch) are shuffled with
    ``np.random.default_rng(seed)``; whole images go to test until they hold >= ``n_test``
    patches, then to val until >= ``n_val``; the rest are training images. Exactly
    ``n_test`` / ``n_val`` patches are then drawn at random from the test / val images (their
    other patches are discarded, never used for training), ``n_initial`` from the training
    images, and the pool is ``n_pool`` of the remaining training patches (``None`` = all).

    Raises:
        UserError: a negative count, or too few images/patches; the message says which count
            to lower and how many patches are available.
    """
    counts = {"n_initial": n_initial, "n_val": n_val, "n_test": n_test, "n_pool": n_pool}
    for key, value in counts.items():
        if value is not None and value < 0:
            raise UserError(f"{key} must be >= 0, got {value}")
    rng = np.random.default_rng(seed)
    per_source = np.bincount(patches.source, minlength=len(patches.names))
    order = rng.permutation(np.flatnonzero(per_source))
    total = int(per_source.sum())
    cumulative = np.cumsum(per_source[order])

    def take_until(start: int, needed: int, role: str, key: str) -> int:
        """Index into ``order`` after the images that hold >= ``needed`` patches from
        ``start`` on."""
        if needed == 0:
            return start
        before = int(cumulative[start - 1]) if start else 0
        stop = int(np.searchsorted(cumulative, before + needed)) + 1
        if stop > len(order):
            raise UserError(
                f"{role} needs {needed} patches but the {len(order) - start} source images "
                f"left for it hold {total - before} (of {total} patches in {len(order)} "
                f"images): lower {key}"
            )
        return stop

    end_test = take_until(0, n_test, "test", "n_test")
    end_val = take_until(end_test, n_val, "val", "n_val (or n_test)")
    groups = order[:end_test], order[end_test:end_val], order[end_val:]
    test_rows, val_rows, train_rows = (np.flatnonzero(np.isin(patches.source, g)) for g in groups)
    n_train = n_initial + (n_pool or 0)
    if len(train_rows) == 0 or len(train_rows) < n_train:
        raise UserError(
            f"training needs n_initial + n_pool = {n_train} patches but after whole images "
            f"went to test ({len(test_rows)} patches) and val ({len(val_rows)} patches) the "
            f"{len(groups[2])} training images hold {len(train_rows)} (of {total} patches in "
            f"{len(order)} images): lower n_initial, n_pool, n_val or n_test"
        )
    test = rng.choice(test_rows, n_test, replace=False)
    val = rng.choice(val_rows, n_val, replace=False)
    initial = rng.choice(train_rows, n_initial, replace=False)
    rest = np.setdiff1d(train_rows, initial)
    pool = rest if n_pool is None else rng.choice(rest, n_pool, replace=False)
    names = [tuple(sorted(patches.names[i] for i in g)) for g in groups]
    return Split(
        initial=initial,
        pool=pool,
        val=val,
        test=test,
        train_sources=names[2],
        val_sources=names[1],
        test_sources=names[0],
    )


def sources_needed(per_source: int, n_initial: int, n_val: int, n_test: int, n_pool: int) -> int:
    """The fewest source images of ``per_source`` patches each that :func:`split_by_source`
    can split into ``n_test`` and ``n_val`` patches of whole images and ``n_initial + n_pool``
    training patches: ``ceil(n_test / p) + ceil(n_val / p) + ceil((n_initial + n_pool) / p)``
    (``p = per_source``, at least 1)."""
    if per_source < 1:
        raise ValueError(f"per_source must be >= 1, got {per_source}")
    return sum(-(-n // per_source) for n in (n_test, n_val, n_initial + n_pool))


# --------------------------------------------------------------------------- normalising


@dataclass(frozen=True)
class Normalizer:
    """Intensity standardisation ``(x - mean) / std``.

    activeseg fits one per image (or volume) on that image alone
    (:mod:`activeseg.data.prepare`).
    """

    mean: float
    std: float

    @classmethod
    def fit(cls, images: np.ndarray, chunk: int = 1 << 22) -> Normalizer:
        """Mean and population std of all values of ``images`` (any shape), in float64, in
        chunks of ``chunk`` values (no full float64 copy); std floored at 1e-6."""
        flat = np.asarray(images).reshape(-1)
        if flat.size == 0:
            raise ValueError("cannot fit a Normalizer on an empty array")
        mean = float(flat.sum(dtype=np.float64)) / flat.size
        squares = sum(
            float(np.square(flat[i : i + chunk].astype(np.float64) - mean).sum())
            for i in range(0, flat.size, chunk)
        )
        return cls(mean=mean, std=max(math.sqrt(squares / flat.size), 1e-6))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """A new float32 array ``(images - mean) / std``; ``images`` is not modified."""
        out = np.array(images, dtype=np.float32)  # always a copy
        out -= np.float32(self.mean)
        out /= np.float32(self.std)
        return out
