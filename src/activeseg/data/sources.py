"""Data sources: each yields :class:`Sample` objects (image, mask, pixel size).

A mask is binary (1 = foreground, e.g. myelin), or with ``labels`` (e.g. ``("axon",
"myelin")``) a label map combined from one binary mask per class (:func:`combine_masks`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from activeseg.data.images import IMAGE_SUFFIXES, image_stem, read_image, read_mask, split_name
from activeseg.data.metadata import bids_pixel_size, checked_pixel_size, file_pixel_size
from activeseg.errors import UserError


@dataclass(frozen=True)
class Sample:
    """One source image with its mask.

    Attributes:
        name: unique identifier, e.g. ``"sub-rat1_sample-data1"``; splits group patches by it.
        image: float32 ``[H, W]`` intensities in [0, 1] (integer images divided by dtype max).
        mask: uint8 ``[H, W]``, 1 = foreground (myelin), 0 = background; with several
            classes the label 0 .. C-1 of each pixel (e.g. 1 = axon, 2 = myelin).
        pixel_size: isotropic pixel size in µm, or ``None`` when unknown (then no resampling).
            Its sources, first found: the caller's (``--pixel-size``), the BIDS sidecars, the
            file's metadata (:mod:`activeseg.data.metadata`: OME-TIFF, TIFF tags).
        path: the image file, or ``None`` for generated data.
    """

    name: str
    image: np.ndarray
    mask: np.ndarray
    pixel_size: float | None
    path: Path | None = None


BIDS_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".ome.tif", ".ome.tiff")
"""Image file extensions recognised in a BIDS microscopy ``micr`` folder."""

MASK_SUFFIXES = ("_seg-myelin-manual", "_seg-myelin", "_mask")
"""Stem suffixes a mask in a folder source may carry beyond its image's stem."""

_LAYOUTS = (
    "'synthetic'; a BIDS microscopy folder (sub-*/micr/*_<MODALITY>.png with labels in "
    "derivatives/labels/); or a folder with images/ and masks/ subfolders"
)


def load_source(
    spec: str,
    *,
    pixel_size: float | None = None,
    modality: str = "SEM",
    label_suffix: str = "seg-myelin-manual",
    channel: int | None = None,
    labels: tuple[str, ...] = (),
) -> list[Sample]:
    """Load samples from a BIDS folder or an images/masks folder (``"synthetic"``, the
    phantom sized to a config, is made by :mod:`activeseg.data.synthetic`).

    Args:
        spec: a directory path. A directory with ``derivatives/`` or ``sub-*`` folders is
            read as BIDS, one with ``images/`` as a folder source.
        pixel_size: µm per pixel for a folder source. BIDS datasets take it from their
            sidecars, so passing it for BIDS is an error.
        modality: BIDS suffix of the images (``"SEM"``, ``"TEM"``, ``"BF"``, …).
        label_suffix: BIDS derivative suffix of the masks.
        channel: the channel to read of multi-channel images (see
            :func:`~activeseg.data.images.read_image`).
        labels: class names: class ``i + 1`` is the mask ``<stem>_seg-<labels[i]>-manual``
            (BIDS and folders); empty: one binary mask per image.

    Returns:
        Samples sorted by name.
    """
    root = Path(spec).expanduser()
    if not root.is_dir():
        raise UserError(f"data source {spec!r} is not a directory; expected {_LAYOUTS}.")
    if _is_bids(root, pixel_size):
        suffixes = label_suffixes(label_suffix, labels)
        return load_bids(root, modality=modality, label_suffix=suffixes, channel=channel)
    if (root / "images").is_dir():
        return load_folder(root, pixel_size=pixel_size, channel=channel, labels=labels)
    raise UserError(f"{root} has no recognised layout; expected {_LAYOUTS}.")


def label_suffixes(label_suffix: str, labels: tuple[str, ...]) -> tuple[str, ...]:
    """The BIDS derivative suffixes of the masks of classes 1 .. C-1: ``seg-<label>-manual``
    for each of ``labels``, else ``label_suffix`` alone (binary)."""
    return tuple(f"seg-{name}-manual" for name in labels) if labels else (label_suffix,)


def load_bids(
    root: Path,
    modality: str = "SEM",
    label_suffix: str | tuple[str, ...] = "seg-myelin-manual",
    channel: int | None = None,
) -> list[Sample]:
    """Load an AxonDeepSeg-style BIDS microscopy dataset.

    Images: ``sub-*/[ses-*/]micr/<stem>.png|tif|tiff`` with ``<stem>`` ending in
    ``_<modality>``. Labels: ``derivatives/labels/<same folder>/<stem>_<label_suffix>.png``
    (``.tif``/``.tiff`` also accepted); several suffixes (one per class, e.g.
    ``("seg-axon-manual", "seg-myelin-manual")``) give label maps (:func:`combine_masks`).
    An image without (all its) labels is skipped with a warning.

    Pixel size (µm) comes from ``PixelSize`` ``[x, y]`` and ``PixelSizeUnits`` (``"um"``
    default, ``"nm"``, ``"mm"``) of the JSON sidecars, merged by the BIDS inheritance
    principle: the dataset-root ``<modality>.json``, then subject-level files such as
    ``sub-rat3_SEM.json``, then the sample-level ``<stem>.json``; the more specific wins.
    Without a ``PixelSize`` in any sidecar, the image file's metadata (OME-TIFF, TIFF tags)
    give it.

    Sample names are the stems without ``_<modality>``, e.g. ``"sub-rat3_sample-data10"``.

    Raises:
        UserError: no images or no labelled images; missing, invalid or anisotropic pixel
            size (naming the JSON); image/mask size mismatch (naming both files).
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise UserError(f"BIDS folder not found: {root}")
    suffixes = (label_suffix,) if isinstance(label_suffix, str) else tuple(label_suffix)
    images = _bids_images(root, modality)
    samples = []
    for image_path in images:
        stem = image_stem(image_path)
        found = [_find_label(root, image_path, f"{stem}_{suffix}") for suffix in suffixes]
        if missing := [s for s, path in zip(suffixes, found, strict=True) if path is None]:
            names = ", ".join(f"{stem}_{suffix}.png" for suffix in missing)
            warnings.warn(
                f"{image_path}: no label {names} under derivatives/labels; image skipped.",
                stacklevel=2,
            )
            continue
        samples.append(
            _make_sample(
                name=stem.removesuffix(f"_{modality}"),
                image_path=image_path,
                mask_path=[path for path in found if path is not None],
                pixel_size=bids_pixel_size(root, image_path, modality),
                channel=channel,
            )
        )
    if not samples:
        wanted = " + ".join(f"'*_{suffix}.png'" for suffix in suffixes)
        raise UserError(
            f"none of the {len(images)} {modality} images in {root} has a label "
            f"{wanted} under derivatives/labels/ (check the label suffix or data.labels)."
        )
    return _sorted_unique(samples)


def load_folder(
    root: Path,
    pixel_size: float | None = None,
    mask_suffix: str = "",
    channel: int | None = None,
    labels: tuple[str, ...] = (),
) -> list[Sample]:
    """Load ``root/images/*`` with ``root/masks/*`` paired by file stem.

    A mask's stem is the image's stem, or the stem plus ``mask_suffix`` or one of
    :data:`MASK_SUFFIXES` (e.g. ``a.png`` ↔ ``a_mask.png``, ``a.ome.tif`` ↔ ``a.tif``).
    Sample names are image stems.

    Args:
        root: folder holding ``images/`` and ``masks/``.
        pixel_size: µm per pixel for all images; ``None``: each image's own metadata
            (OME-TIFF, TIFF tags), else unknown.
        mask_suffix: extra accepted mask-stem suffix, e.g. ``"_label"``.
        channel: the channel to read of multi-channel images.
        labels: class names; each image then needs one mask
            ``masks/<stem>_seg-<label>-manual.<ext>`` per label, combined into a label map.

    Raises:
        UserError: missing folders, no images, images without a mask, masks without an
            image, an image with several masks, or image/mask size mismatch.
    """
    root = Path(root).absolute()
    image_dir, mask_dir = root / "images", root / "masks"
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise UserError(f"folder {folder} not found: a folder source needs images/ and masks/.")
    if pixel_size is not None:
        pixel_size = checked_pixel_size(pixel_size, "pixel_size")
    images = {image_stem(path): path for path in _image_files(image_dir)}
    if not images:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
    masks = _image_files(mask_dir)
    if labels:
        per_class = [
            _pair_masks(images, [m for m in masks if image_stem(m).endswith(s)], s, only=True)
            for s in (f"_seg-{name}-manual" for name in labels)
        ]
        pairs = {stem: [found[stem] for found in per_class] for stem in images}
    else:
        pairs = {stem: [m] for stem, m in _pair_masks(images, masks, mask_suffix).items()}
    return _sorted_unique(
        [
            _make_sample(
                name=stem,
                image_path=images[stem],
                mask_path=mask,
                pixel_size=file_pixel_size(images[stem]) if pixel_size is None else pixel_size,
                channel=channel,
            )
            for stem, mask in pairs.items()
        ]
    )


@dataclass(frozen=True)
class ImageFile:
    """An image file without a mask: ``name`` is the file stem (BIDS: e.g.
    ``sub-rat1_sample-data1_SEM``), ``pixel_size`` in µm or ``None`` when unknown."""

    name: str
    path: Path
    pixel_size: float | None


def find_images(
    spec: Path, *, pixel_size: float | None = None, modality: str = "SEM"
) -> list[ImageFile]:
    """The images of a BIDS microscopy dataset (``sub-*/micr/*_<modality>.*``, pixel sizes
    from the sidecars) or of a plain folder (its image files, else those of its ``images/``
    subfolder, all of pixel size ``pixel_size``), sorted by name; masks are not looked for.
    Where neither gives a pixel size, each file's metadata do (OME-TIFF, TIFF tags).

    Raises:
        UserError: not a folder, no images, a pixel size given for BIDS, duplicate stems.
    """
    root = Path(spec).expanduser().absolute()
    if not root.is_dir():
        raise UserError(f"image folder {spec} not found; give a BIDS dataset or a folder of images")
    if _is_bids(root, pixel_size):
        found = [
            ImageFile(image_stem(p), p, bids_pixel_size(root, p, modality))
            for p in _bids_images(root, modality)
        ]
    else:
        folder = root / "images" if (root / "images").is_dir() else root
        size = None if pixel_size is None else checked_pixel_size(pixel_size, "pixel size")
        found = [image_file(p, size) for p in _image_files(folder)]
        if not found:
            raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    names = [f.name for f in found]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise UserError(f"several images share the file stem {', '.join(dup)}; rename them")
    return sorted(found, key=lambda f: f.name)


def is_bids(root: Path) -> bool:
    """Whether ``root`` is a BIDS dataset (``derivatives/`` or ``sub-*`` folders)."""
    return (root / "derivatives").is_dir() or any(p.is_dir() for p in root.glob("sub-*"))


def image_file(path: Path, pixel_size: float | None = None) -> ImageFile:
    """The :class:`ImageFile` of ``path``: of pixel size ``pixel_size``, else that of its
    BIDS sidecars (a file inside a BIDS dataset's ``sub-*`` folder), else that of the file's
    metadata, else unknown."""
    size = pixel_size or _sidecar_pixel_size(Path(path)) or file_pixel_size(path)
    return ImageFile(image_stem(path), path, size)


def _sidecar_pixel_size(path: Path) -> float | None:
    """The pixel size of a file inside a BIDS dataset from its sidecars (``None`` if it is
    not in one, or they give none)."""
    subject = next((p for p in path.absolute().parents if p.name.startswith("sub-")), None)
    if subject is None or not is_bids(subject.parent):
        return None
    try:
        return bids_pixel_size(subject.parent, path.absolute(), image_stem(path).split("_")[-1])
    except UserError:
        return None


def _is_bids(root: Path, pixel_size: float | None) -> bool:
    """:func:`is_bids`; a pixel size given for one is an error (its sidecars hold them)."""
    bids = is_bids(root)
    if bids and pixel_size is not None:
        raise UserError(
            f"{root} is a BIDS dataset: pixel sizes come from its JSON sidecars; "
            "do not pass a pixel size."
        )
    return bids


def _bids_images(root: Path, modality: str) -> list[Path]:
    """The ``modality`` image files of a BIDS dataset (sorted); raise if there are none."""
    images = sorted(
        path
        for pattern in (f"sub-*/micr/*_{modality}.*", f"sub-*/ses-*/micr/*_{modality}.*")
        for path in root.glob(pattern)
        if split_name(path)[1] in BIDS_IMAGE_SUFFIXES
    )
    if not images:
        raise UserError(
            f"no {modality} images in {root}: expected files like "
            f"sub-<id>/micr/sub-<id>_sample-<id>_{modality}.png (check the modality option)."
        )
    return images


def _pair_masks(
    images: dict[str, Path], masks: list[Path], mask_suffix: str, only: bool = False
) -> dict[str, Path]:
    """Map each image stem to its one mask; raise listing every orphan or ambiguity. Mask
    stems may add ``mask_suffix`` or (unless ``only``) one of :data:`MASK_SUFFIXES`."""
    suffixes = tuple(s for s in (mask_suffix, *(() if only else MASK_SUFFIXES)) if s)
    found: dict[str, list[Path]] = {stem: [] for stem in images}
    orphan_masks = []
    for mask in masks:
        stem = image_stem(mask)
        candidates = [stem] + [stem.removesuffix(s) for s in suffixes if stem.endswith(s)]
        match = next((c for c in candidates if c in images), None)
        if match is None:
            orphan_masks.append(mask.name)
        else:
            found[match].append(mask)
    problems = []
    if no_mask := sorted(images[s].name for s, m in found.items() if not m):
        problems.append(f"images without a mask: {', '.join(no_mask)}")
    if orphan_masks:
        problems.append(f"masks without an image: {', '.join(sorted(orphan_masks))}")
    if several := sorted(s for s, m in found.items() if len(m) > 1):
        problems.append(f"images with several masks: {', '.join(several)}")
    if problems:
        raise UserError(
            "; ".join(problems) + ". Each images/<name>.<ext> needs exactly one "
            f"masks/<name>[suffix].<ext> (suffix one of {', '.join(suffixes)}); "
            "add, rename or remove files."
        )
    return {stem: found[stem][0] for stem in images}


def _image_files(folder: Path) -> list[Path]:
    """Visible image files in ``folder`` (not recursive), sorted."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _make_sample(
    name: str,
    image_path: Path,
    mask_path: Sequence[Path],
    pixel_size: float | None,
    channel: int | None = None,
) -> Sample:
    """Read an image and its mask (one per class, see :func:`combine_masks`); raise if their
    shapes differ.

    A mask without foreground, or foreground everywhere, is accepted with a warning: a
    region without myelin is real data, but such a mask is also what an inverted or empty
    export looks like.
    """
    image = read_image(image_path, channel)
    masks = []
    for path in mask_path:
        mask = read_mask(path)
        if image.shape != mask.shape:
            raise UserError(
                f"image {image_path} is {image.shape[1]}×{image.shape[0]} pixels but its mask "
                f"{path} is {mask.shape[1]}×{mask.shape[0]}; they must match."
            )
        if not mask.any() or mask.all():
            what = "no foreground (myelin) pixel" if not mask.any() else "foreground everywhere"
            warnings.warn(
                f"mask {path} has {what}; used as it is. Check that it is not empty or "
                "inverted (foreground = myelin must be the bright value, e.g. 255 on 0).",
                stacklevel=3,
            )
        masks.append(mask)
    labels = combine_masks(masks, str(image_path)) if len(masks) > 1 else masks[0]
    return Sample(name=name, image=image, mask=labels, pixel_size=pixel_size, path=image_path)


OVERLAP_WARNING = 0.01
"""Fraction of the labelled pixels above which overlapping class masks get a warning."""


def combine_masks(masks: Sequence[np.ndarray], where: str) -> np.ndarray:
    """The label map uint8 ``[H, W]`` of binary class masks ``[H, W]`` (class ``i + 1`` =
    ``masks[i]``, 0 = background). Where masks overlap the later class wins (AxonDeepSeg's
    axon and myelin masks are disjoint; one image of its SEM set shares 9 edge pixels,
    which then count as myelin); an overlap above :data:`OVERLAP_WARNING` of the labelled
    pixels (``where`` names the image) gets a warning, as it suggests wrong files."""
    labels = np.zeros(masks[0].shape, dtype=np.uint8)
    for k, mask in enumerate(masks, start=1):
        labels[mask.astype(bool)] = k
    covered = int(np.count_nonzero(labels))
    overlap = int(sum(np.count_nonzero(m) for m in masks)) - covered
    if covered and overlap / covered > OVERLAP_WARNING:
        warnings.warn(
            f"{where}: the class masks overlap on {overlap} pixels ({overlap / covered:.1%} of "
            "the labelled ones); the later class of data.labels wins there. Check that the "
            "masks belong to the same image and classes.",
            stacklevel=3,
        )
    return labels


def _sorted_unique(samples: list[Sample]) -> list[Sample]:
    """Sort by name; raise if two samples share a name (splits group by name)."""
    samples = sorted(samples, key=lambda s: s.name)
    for first, second in zip(samples, samples[1:], strict=False):
        if first.name == second.name:
            raise UserError(
                f"two images give the sample name {first.name!r}: {first.path} and "
                f"{second.path}; keep one."
            )
    return samples


def _find_label(root: Path, image_path: Path, label_stem: str) -> Path | None:
    """The label file mirroring ``image_path`` under ``derivatives/labels``, if any."""
    folder = root / "derivatives" / "labels" / image_path.parent.relative_to(root)
    return next(
        (
            folder / f"{label_stem}{ext}"
            for ext in (".png", ".tif", ".tiff")
            if (folder / f"{label_stem}{ext}").is_file()
        ),
        None,
    )
