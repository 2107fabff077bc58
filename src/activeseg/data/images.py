"""Reading images and masks from PNG/TIFF/JPEG files; writing masks atomically.

Conventions: images are float32 ``[H, W]`` in [0, 1]; masks are uint8 ``[H, W]`` in {0, 1}
(1 = foreground, e.g. myelin). Colour is reduced to luminance with the ITU-R 601 weights
(0.299 R + 0.587 G + 0.114 B); alpha channels are dropped. An image of several channels
(a TIFF channel axis, or more than four samples per pixel) is refused unless one channel is
chosen (``channel``: ``--channel N``, ``data.channel``). OME-TIFF names (``x.ome.tif``,
``x.ome.tiff``) have one two-part extension: their stem is ``x`` (:func:`split_name`).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tifffile
from PIL import Image

from activeseg.errors import UserError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
"""File suffixes :func:`read_image` and :func:`read_mask` accept (lower case); OME-TIFF
(``.ome.tif``, ``.ome.tiff``) ends in one of them."""

OME_EXTENSIONS = (".ome.tiff", ".ome.tif")


def split_name(path: Path) -> tuple[str, str]:
    """``("x_SEM", ".ome.tif")`` for ``x_SEM.ome.tif``, ``("a", ".png")`` for ``a.PNG``: the
    stem and the lower-cased extension, OME-TIFF's two parts counted as one."""
    name = Path(path).name
    for ext in OME_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)], ext
    return Path(path).stem, Path(path).suffix.lower()


def image_stem(path: Path) -> str:
    """The file name without its extension (``x`` of ``x.ome.tif``)."""
    return split_name(path)[0]


_TIFF_SUFFIXES = (".tif", ".tiff")
_LUMA_601 = np.array([0.299, 0.587, 0.114])
_READ_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    tifffile.TiffFileError,
    Image.DecompressionBombError,
)


def read_image(path: Path, channel: int | None = None) -> np.ndarray:
    """Read a 2-D image as float32 ``[H, W]`` in [0, 1].

    Gray is kept; colour becomes ITU-R 601 luminance; alpha is dropped; ``channel`` (0-based)
    keeps one channel (or colour sample) instead, and is required for an image of several
    channels. Integer images are divided by their dtype maximum (uint8 / 255, uint16 /
    65535). Float images already within [0, 1] are kept; otherwise (floats, or signed
    integers with negative values) they are min–max scaled to [0, 1] (a constant image
    becomes 0).

    Raises:
        UserError: the file is missing, unreadable, multi-page/3-D, not finite, of several
            channels without ``channel``, or without channel ``channel``.
    """
    return as_image(_read_raw(Path(path)), str(path), channel)


def as_image(raw: Raw | np.ndarray, where: str, channel: int | None = None) -> np.ndarray:
    """An array as :func:`read_image` reads it (float32 ``[H, W]`` in [0, 1]): ``raw``
    ``[H, W]`` or ``[H, W, N]`` colour samples (e.g. a napari layer's data); ``where``
    names it in errors."""
    raw = raw if isinstance(raw, Raw) else Raw(np.asarray(raw))
    gray = _luminance(raw, Path(where), channel)
    if not np.issubdtype(raw.data.dtype, np.floating):
        gray = gray / _dtype_max(raw.data.dtype)
    return _unit_range(gray).astype(np.float32)


def read_mask(path: Path) -> np.ndarray:
    """Read a binary mask as uint8 ``[H, W]`` in {0, 1}.

    Colour is converted to gray (alpha dropped), then binarised at half range: values above
    0.5 if the maximum is <= 1, else above half the dtype range (127.5 for uint8, 32767.5 for
    uint16; for floats half the maximum). Anti-aliased edges therefore snap to 0 or 1. A mask
    with more than 1 % of its pixels at intermediate levels (a label image or a soft mask) is
    binarised the same way, with a warning.

    Raises:
        UserError: the file is missing, unreadable, multi-page/3-D, or not finite.
    """
    raw = _read_raw(Path(path))
    gray = _luminance(raw, path)
    peak = float(gray.max()) if gray.size else 0.0
    if peak <= 1:
        threshold, full = 0.5, 1.0
    elif np.issubdtype(raw.data.dtype, np.floating):
        threshold, full = peak / 2, peak
    else:
        threshold, full = _dtype_max(raw.data.dtype) / 2, _dtype_max(raw.data.dtype)
    _warn_if_multilevel(path, gray, full, threshold)
    return (gray > threshold).astype(np.uint8)


MULTILEVEL_FRACTION = 0.01
"""A mask with more than this fraction of pixels strictly between 0 and full scale is
not an anti-aliased binary mask (edges alone stay well below 1 %) and gets a warning."""


def _warn_if_multilevel(path: Path, gray: np.ndarray, full: float, threshold: float) -> None:
    between = (gray > 0) & (gray < full)
    if gray.size and between.mean() > MULTILEVEL_FRACTION:
        levels = np.unique(gray[between])
        shown = ", ".join(f"{v:g}" for v in levels[:4]) + (", ..." if len(levels) > 4 else "")
        warnings.warn(
            f"mask {path}: {between.mean():.0%} of its pixels lie between 0 and {full:g} "
            f"(levels {shown}); binarised at > {threshold:g}. If it is a label image with "
            "several classes (e.g. AxonDeepSeg axon 255, myelin 127), export the myelin mask "
            "alone as 0/255.",
            stacklevel=3,
        )


def write_mask_png(path: Path, mask: np.ndarray) -> None:
    """Write a {0, 1} (or bool) mask ``[H, W]`` as an 8-bit PNG with values 0/255.

    The file is written under a temporary name in the same folder, then renamed, so readers
    never see a partial file. Missing parent folders are created.

    Raises:
        ValueError: ``mask`` is not 2-D or holds values other than 0 and 1.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    if not np.isin(mask, (0, 1)).all():
        raise ValueError("mask values must be 0 or 1")
    write_gray_png(path, mask.astype(np.uint8) * 255)


def write_gray_png(path: Path, array: np.ndarray) -> None:
    """Write a uint8 (or uint16) ``[H, W]`` array as an 8-bit (16-bit) gray PNG, values as
    they are (e.g. a label map 0 .. C-1, or AxonDeepSeg's axon 255 / myelin 127),
    atomically: under a temporary name in the same folder, then renamed. Missing parent
    folders are created."""
    array = np.asarray(array)
    if array.dtype not in (np.uint8, np.uint16) or array.ndim != 2:
        raise ValueError(f"need a uint8 or uint16 [H, W] array, got {array.dtype} {array.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            Image.fromarray(array).save(handle, format="PNG")
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def read_labels(path: Path) -> np.ndarray:
    """Read a label map (values as stored, e.g. 0 .. C-1) as uint8 ``[H, W]``.

    Raises:
        UserError: unreadable, not 2-D, or not of integer values 0 .. 255.
    """
    raw = _read_raw(Path(path))
    if raw.data.ndim != 2 or not np.issubdtype(raw.data.dtype, np.integer):
        raise UserError(f"{path} is not a label map (one channel of integer labels)")
    if raw.data.size and (raw.data.min() < 0 or raw.data.max() > 255):
        raise UserError(f"{path}: labels must lie in 0 .. 255")
    return raw.data.astype(np.uint8)


class Raw(NamedTuple):
    """Pixels as stored, original dtype: ``[H, W]``, or ``[H, W, N]`` with ``kind``
    ``"samples"`` (gray + alpha, RGB, RGBA: one colour image) or ``"channels"`` (a TIFF
    channel axis: separate images of one field of view)."""

    data: np.ndarray
    kind: str = "samples"


def _read_raw(path: Path) -> Raw:
    """Pixel array as stored (see :class:`Raw`)."""
    if not path.is_file():
        raise UserError(f"image file not found: {path}")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(
            f"unsupported image type {path.suffix!r}: {path}; "
            f"use one of {', '.join(IMAGE_SUFFIXES)}"
        )
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            return _read_tiff(path)
        return Raw(_read_pillow(path))
    except _READ_ERRORS as exc:
        raise UserError(
            f"cannot read image {path}: {exc}. The file may be truncated or not a valid "
            f"{path.suffix.lstrip('.').upper()}; re-export or re-download it."
        ) from exc


def _read_tiff(path: Path) -> Raw:
    """Read one 2-D image (its samples or channels last) of a TIFF with tifffile; fall back
    to Pillow for codecs tifffile lacks.

    (Without the optional ``imagecodecs`` package tifffile cannot decode e.g. LZW or JPEG
    compression; Pillow can.) A channel axis ``C`` (an OME-TIFF stores each channel as a
    page) is kept; any other axis beyond Y, X and the samples is refused.
    """
    with tifffile.TiffFile(path) as tif:
        if len(tif.series) > 1:
            raise _not_2d(path, f"{len(tif.pages)} pages")
        series = tif.series[0]
        try:
            data = series.asarray()
        except ValueError as exc:
            if "imagecodecs" not in str(exc):
                raise
            return Raw(_read_pillow(path))
        axes = series.axes
    sizes = dict(zip(axes, data.shape, strict=True))
    extra = {ax: n for ax, n in sizes.items() if ax not in "YXSC" and n > 1}
    if extra or (sizes.get("S", 1) > 1 and sizes.get("C", 1) > 1):
        raise _not_2d(path, f"axes {axes} with shape {data.shape}")
    multi = next((ax for ax in "SC" if sizes.get(ax, 1) > 1), None)
    order = [axes.index(ax) for ax in ("Y", "X", *([multi] if multi else []))]
    rest = [i for i in range(len(axes)) if i not in order]  # all of size 1
    data = np.transpose(data, order + rest).reshape([data.shape[i] for i in order])
    return Raw(data, "channels" if multi == "C" else "samples")


def _read_pillow(path: Path) -> np.ndarray:
    """Read with Pillow; palette/CMYK/other modes are converted to RGB(A) first."""
    with Image.open(path) as img:
        if getattr(img, "n_frames", 1) > 1:
            raise _not_2d(path, f"{img.n_frames} frames")
        if img.mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "F") and not img.mode.startswith(
            "I;16"
        ):
            img = img.convert("RGBA" if "A" in img.mode or "transparency" in img.info else "RGB")
        return np.asarray(img)


def _not_2d(path: Path, what: str) -> UserError:
    return UserError(
        f"{path} holds {what}, but a single 2-D image is needed; "
        "save one plane (one page, gray or RGB) per file."
    )


def _luminance(raw: Raw, path: Path, channel: int | None = None) -> np.ndarray:
    """float64 ``[H, W]``: gray as is, gray+alpha without alpha, RGB(A) as 601 luminance,
    or the one ``channel``; several channels without ``channel`` are refused."""
    data = raw.data
    n = data.shape[-1] if data.ndim == 3 else 1
    if data.ndim not in (2, 3):
        raise _not_2d(path, f"an array of shape {data.shape}")
    if channel is not None:
        if not 0 <= channel < n:
            raise UserError(
                f"{path} has {n} channel(s) (0 to {n - 1}); channel {channel} does not exist"
            )
        gray = (data[..., channel] if data.ndim == 3 else data).astype(np.float64)
    elif data.ndim == 2:
        gray = data.astype(np.float64)
    elif raw.kind == "samples" and n in (1, 2):
        gray = data[..., 0].astype(np.float64)
    elif raw.kind == "samples" and n in (3, 4):
        gray = data[..., :3].astype(np.float64) @ _LUMA_601
    else:
        raise UserError(
            f"{path} is an image of {n} channels; activeseg segments one: choose it with "
            f"--channel N (or --set data.channel=N), N from 0 to {n - 1}"
        )
    if not np.isfinite(gray).all():
        raise UserError(f"{path} contains NaN or infinite values; fix or re-export the image.")
    return gray


def _dtype_max(dtype: np.dtype) -> float:
    """Full-scale value of an integer (or bool) dtype: 255 for uint8, 65535 for uint16."""
    return 1.0 if dtype == np.bool_ else float(np.iinfo(dtype).max)


def _unit_range(gray: np.ndarray) -> np.ndarray:
    """Keep values already in [0, 1]; otherwise min–max scale to [0, 1] (constant → 0)."""
    low, high = (float(gray.min()), float(gray.max())) if gray.size else (0.0, 0.0)
    if low >= 0 and high <= 1:
        return gray
    return (gray - low) / (high - low) if high > low else np.zeros_like(gray)
