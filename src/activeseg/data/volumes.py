"""3D volumes: NIfTI reading, MSD and folder sources, resampling, intensity window, samples.

Conventions: a :class:`Volume` holds float32 intensities ``[X, Y, Z]`` (the NIfTI voxel axes,
as stored) and a uint8 label map ``[X, Y, Z]`` with values ``0 .. classes - 1`` (0 =
background); ``spacing`` is the voxel size in mm along X, Y, Z (from the NIfTI header).
:func:`volume_patches` turns volumes into a :class:`~activeseg.data.patches.PatchSet` of
``[N, 1, P, P, P]`` samples, so splitting by source (:func:`split_by_source`) and
normalising (:class:`Normalizer`) are the 2D machinery unchanged.

Order of use::

    volumes = load_volumes(root, classes)              # MSD dataset.json or a NIfTI folder
    volumes = [prepare_volume(v, spacing, window, by_percentile) for v in volumes]
    patches = volume_patches(volumes, size, whole=True) # pad/crop each to size^3, or tile
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from activeseg.data.patches import PatchSet
from activeseg.errors import UserError

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class Volume:
    """One 3D image with its label map.

    Attributes:
        name: unique identifier (the file name without ``.nii[.gz]``); splits group by it.
        image: float32 ``[X, Y, Z]`` intensities (raw until :func:`prepare_volume`).
        mask: uint8 ``[X, Y, Z]`` labels ``0 .. classes - 1``.
        spacing: voxel size in mm along X, Y, Z.
        path: the image file, or ``None`` for generated data.
    """

    name: str
    image: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float, float]
    path: Path | None = None


# --------------------------------------------------------------------------- reading


def read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A 3D NIfTI file as float64 ``[X, Y, Z]`` (scaling slope applied) and its spacing (mm).

    Raises:
        UserError: missing or unreadable file, not 3D, non-finite values, bad spacing.
    """
    try:
        import nibabel as nib
    except ImportError as exc:  # an optional extra
        raise UserError(
            'reading NIfTI volumes needs nibabel: pip install "activeseg[volumes]"'
        ) from exc

    path = Path(path)
    if not path.is_file():
        raise UserError(f"volume file not found: {path}")
    try:
        img: Any = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float64)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise UserError(
            f"cannot read NIfTI volume {path}: {exc}; re-export or re-download it"
        ) from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise UserError(f"{path} has shape {data.shape}, but a single 3D volume is needed")
    if not np.isfinite(data).all():
        raise UserError(f"{path} contains NaN or infinite values; fix or re-export it")
    if len(zooms) != 3 or not all(math.isfinite(z) and z > 0 for z in zooms):
        raise UserError(f"{path}: voxel spacing {zooms} in the header must be 3 positive numbers")
    return data, (zooms[0], zooms[1], zooms[2])


def read_labels(path: Path, classes: int) -> np.ndarray:
    """A NIfTI label map as uint8 ``[X, Y, Z]``; every value must be an integer in
    ``0 .. classes - 1``.

    Raises:
        UserError: naming the file, the unexpected values and the setting to change.
    """
    data, _ = read_nifti(path)
    values = np.unique(data)
    bad = values[(values != np.round(values)) | (values < 0) | (values >= classes)]
    if len(bad):
        shown = ", ".join(f"{v:g}" for v in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise UserError(
            f"label map {path} holds value(s) {shown}, but labels must be integers "
            f"0 .. {classes - 1} (data.num_classes={classes}); fix the file or set "
            "data.num_classes"
        )
    return data.astype(np.uint8)


def load_volume(name: str, image_path: Path, label_path: Path, classes: int) -> Volume:
    """Read an image and its label map; their shapes must match."""
    image, spacing = read_nifti(image_path)
    mask = read_labels(label_path, classes)
    if image.shape != mask.shape:
        raise UserError(
            f"image {image_path} has shape {image.shape} but its labels {label_path} have "
            f"{mask.shape}; they must match"
        )
    return Volume(name, image.astype(np.float32), mask, spacing, Path(image_path))


def _stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES[::-1]:  # .nii.gz before .nii
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.endswith(NIFTI_SUFFIXES)
    )


def is_msd(root: Path) -> bool:
    """Whether ``root`` is a Medical Segmentation Decathlon task folder."""
    return (root / "dataset.json").is_file()


def load_msd(root: Path, classes: int) -> list[Volume]:
    """The training pairs listed in ``root/dataset.json`` (MSD layout: ``imagesTr/``,
    ``labelsTr/``), sorted by name.

    Files in ``imagesTr/`` or ``labelsTr/`` that ``dataset.json`` does not list are ignored
    with one warning naming them. ``classes`` must equal the number of ``labels`` the
    dataset declares.

    Raises:
        UserError: unreadable ``dataset.json``, a listed file missing or unreadable, a label
            map with unexpected values, shape mismatches, or a class count mismatch.
    """
    root = Path(root).absolute()
    meta_path = root / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        pairs = [(root / e["image"], root / e["label"]) for e in meta["training"]]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(
            f"cannot read the training pairs of {meta_path}: {exc!r}; it needs "
            '"training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}, ...]'
        ) from exc
    if not pairs:
        raise UserError(f"{meta_path} lists no training pairs")
    declared = meta.get("labels")
    if isinstance(declared, dict) and len(declared) != classes:
        raise UserError(
            f"{meta_path} declares {len(declared)} labels "
            f"({', '.join(map(str, declared.values()))}) but data.num_classes is {classes}; "
            f"set data.num_classes={len(declared)}"
        )
    listed = {p.resolve() for pair in pairs for p in pair}
    unlisted = [
        f"{folder}/{p.name}"
        for folder in ("imagesTr", "labelsTr")
        if (root / folder).is_dir()
        for p in _nifti_files(root / folder)
        if p.resolve() not in listed
    ]
    if unlisted:
        shown = ", ".join(unlisted[:6]) + (", ..." if len(unlisted) > 6 else "")
        warnings.warn(
            f"{len(unlisted)} file(s) in {root} are not listed in dataset.json and are "
            f"ignored: {shown}",
            stacklevel=2,
        )
    volumes = [load_volume(_stem(image), image, label, classes) for image, label in pairs]
    return _sorted_unique(volumes)


def load_nifti_folder(root: Path, classes: int) -> list[Volume]:
    """``root/images/*.nii[.gz]`` with ``root/labels/`` (or ``root/masks/``) files of the same
    name, sorted by name. Every image needs exactly one label file and vice versa."""
    root = Path(root).absolute()
    label_dir = next((root / d for d in ("labels", "masks") if (root / d).is_dir()), None)
    if label_dir is None:
        raise UserError(f"{root}/images holds NIfTI volumes but there is no labels/ folder")
    images = {_stem(p): p for p in _nifti_files(root / "images")}
    labels = {_stem(p): p for p in _nifti_files(label_dir)}
    problems = []
    if missing := sorted(set(images) - set(labels)):
        problems.append(f"images without labels: {', '.join(missing)}")
    if orphans := sorted(set(labels) - set(images)):
        problems.append(f"labels without an image: {', '.join(orphans)}")
    if problems or not images:
        raise UserError(
            "; ".join(problems or [f"no .nii/.nii.gz volumes in {root}/images"])
            + f". Each images/<name>.nii.gz needs {label_dir.name}/<name>.nii.gz"
        )
    return _sorted_unique(
        [load_volume(stem, images[stem], labels[stem], classes) for stem in sorted(images)]
    )


def holds_nifti(root: Path) -> bool:
    """Whether ``root/images`` holds NIfTI volumes."""
    folder = Path(root) / "images"
    return folder.is_dir() and bool(_nifti_files(folder))


def load_volumes(spec: str, classes: int) -> list[Volume]:
    """Volumes from an MSD task folder (``dataset.json``) or a folder ``images/`` +
    ``labels/`` of NIfTI (``"synthetic"``, the phantom sized to a config, is made by
    :mod:`activeseg.data.synthetic`)."""
    root = Path(spec).expanduser()
    if is_msd(root):
        return load_msd(root, classes)
    if holds_nifti(root):
        return load_nifti_folder(root, classes)
    raise UserError(
        f"{spec!r} is not a volume source: expected 'synthetic', an MSD task folder with "
        "dataset.json, or a folder with images/ and labels/ holding .nii.gz volumes"
    )


def _sorted_unique(volumes: list[Volume]) -> list[Volume]:
    volumes = sorted(volumes, key=lambda v: v.name)
    for a, b in zip(volumes, volumes[1:], strict=False):
        if a.name == b.name:
            raise UserError(f"two volumes are named {a.name!r}: {a.path} and {b.path}; keep one")
    return volumes


# --------------------------------------------------------------------------- preparing


def scale_intensity(
    image: np.ndarray, window: tuple[float, float] | None, by_percentile: bool = False
) -> np.ndarray:
    """Intensities clipped to ``window = (low, high)`` and scaled to [0, 1] (float32).

    ``by_percentile``: ``low`` and ``high`` are percentiles of this volume (e.g. (0.5, 99.5);
    for data whose intensity scale differs between volumes). ``window = None``: the volume's
    min and max. A constant volume becomes 0.
    """
    if window is None:
        low, high = float(image.min()), float(image.max())
    elif by_percentile:
        low, high = (float(v) for v in np.percentile(image, window))
    else:
        low, high = float(window[0]), float(window[1])
    if high <= low:
        return np.zeros(image.shape, dtype=np.float32)
    return ((np.clip(image, low, high) - low) / (high - low)).astype(np.float32)


def resample_volume(volume: Volume, spacing: float | None) -> Volume:
    """``volume`` at the isotropic ``spacing`` (mm); the same object if ``None`` or equal.

    New shape ``max(1, round(n * old / spacing))`` per axis. The image is interpolated
    trilinearly; labels by trilinear interpolation of their one-hot channels and argmax, so
    they stay labels (never interpolated as numbers).
    """
    if spacing is None or all(s == spacing for s in volume.spacing):
        return volume
    if not (math.isfinite(spacing) and spacing > 0):
        raise UserError(f"data.spacing must be a positive number of mm, got {spacing}")
    shape = tuple(
        max(1, round(n * s / spacing))
        for n, s in zip(volume.image.shape, volume.spacing, strict=True)
    )
    with torch.no_grad():
        image = torch.from_numpy(np.ascontiguousarray(volume.image, dtype=np.float32))
        image = F.interpolate(image[None, None], size=shape, mode="trilinear", align_corners=False)
        labels = torch.from_numpy(volume.mask.astype(np.int64))
        onehot = F.one_hot(labels, int(labels.max()) + 1).permute(3, 0, 1, 2)[None].float()
        onehot = F.interpolate(onehot, size=shape, mode="trilinear", align_corners=False)
        mask = onehot[0].argmax(0).to(torch.uint8)
    return dataclasses.replace(
        volume,
        image=image[0, 0].numpy(),
        mask=mask.numpy(),
        spacing=(float(spacing),) * 3,
    )


def prepare_volume(
    volume: Volume,
    spacing: float | None,
    window: tuple[float, float] | None,
    by_percentile: bool = False,
) -> Volume:
    """Intensity window (:func:`scale_intensity`), then resampling (:func:`resample_volume`)."""
    scaled = dataclasses.replace(volume, image=scale_intensity(volume.image, window, by_percentile))
    return resample_volume(scaled, spacing)


# --------------------------------------------------------------------------- samples


def center_fit(array: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``array`` ``[X, Y, Z]`` centre-cropped or zero-padded to ``size`` per axis; returns
    the result and the origin ``[3]`` of its first voxel in ``array`` (negative = padding)."""
    origin = np.array([(n - size) // 2 for n in array.shape], dtype=np.int64)
    out = np.zeros((size,) * array.ndim, dtype=array.dtype)
    spans = [(int(o), min(size, n)) for o, n in zip(origin, array.shape, strict=True)]
    src = tuple(slice(max(o, 0), max(o, 0) + n) for o, n in spans)
    dst = tuple(slice(max(-o, 0), max(-o, 0) + n) for o, n in spans)
    out[dst] = array[src]
    return out, origin


def grid_origins(shape: Sequence[int], size: int) -> np.ndarray:
    """Origins ``[K, D]`` of the centred non-overlapping grid of ``size``-cubes in ``shape``
    (row-major order; ``K = prod(floor(n / size))``, 0 if any axis is smaller)."""
    axes = [(n - (n // size) * size) // 2 + size * np.arange(n // size) for n in shape]
    grids = np.meshgrid(*axes, indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1).astype(np.int64)


def volume_patches(volumes: Sequence[Volume], size: int, whole: bool = True) -> PatchSet:
    """Samples ``[N, 1, size, size, size]`` of ``volumes``.

    ``whole``: one sample per volume, centre-cropped or zero-padded to ``size`` per axis
    (Nath et al.'s whole-volume samples); else a centred grid of non-overlapping
    ``size``-cubes per volume (volumes smaller than one cube give none, with a warning).
    ``origin`` is each sample's first voxel in its volume.
    """
    if not volumes:
        raise UserError("no volumes to cut into samples")
    if size < 1:
        raise UserError(f"data.patch_size must be >= 1 voxel, got {size}")
    images, masks, sources, origins, small = [], [], [], [], []
    for index, v in enumerate(volumes):
        if whole:
            (image, origin), (mask, _) = center_fit(v.image, size), center_fit(v.mask, size)
            images.append(image[None, None])
            masks.append(mask[None, None])
            origins.append(origin[None])
            sources.append(np.array([index]))
            continue
        starts = grid_origins(v.image.shape, size)
        if len(starts) == 0:
            small.append(f"{v.name} {v.image.shape}")
            continue
        cut = [tuple(slice(o, o + size) for o in start) for start in starts]
        images.append(np.stack([v.image[c] for c in cut])[:, None])
        masks.append(np.stack([v.mask[c] for c in cut])[:, None])
        origins.append(starts)
        sources.append(np.full(len(starts), index))
    if small:
        if not images:
            raise UserError(
                f"no volume holds one {size}^3 patch (e.g. {small[0]}): lower data.patch_size "
                "or set data.whole_volume=true"
            )
        warnings.warn(
            f"{len(small)} volume(s) smaller than one {size}^3 patch give none: "
            + ", ".join(small[:5]),
            stacklevel=2,
        )
    spacings = {v.spacing for v in volumes}
    common = spacings.pop() if len(spacings) == 1 else None
    return PatchSet(
        images=np.concatenate(images).astype(np.float32, copy=False),
        masks=np.concatenate(masks).astype(np.uint8, copy=False),
        source=np.concatenate(sources).astype(np.int64),
        origin=np.concatenate(origins).astype(np.int64),
        names=tuple(v.name for v in volumes),
        pixel_size=common[0] if common is not None and len(set(common)) == 1 else None,
    )
