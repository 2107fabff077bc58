"""The report header's account of the data: what was really done to the images, from the
prepared data (pixel sizes after resampling), not from what the config asked for.

A folder of images without a pixel size is not resampled whatever ``data.pixel_size`` says;
volumes are measured in mm of voxel spacing, not µm per pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

from activeseg.config import DataConfig
from activeseg.data.prepare import Scales

NOT_LOADED = "as configured; the data was not loaded to check"


def describe_patches(d: DataConfig, scales: Scales | None) -> str:
    """``"128-pixel patches at 0.2 µm/pixel"``, ``"128-pixel patches at native pixel size
    (unknown: ...)"``, ``"24³-voxel samples (whole volumes ...) at 2 mm spacing"``, ...;
    ``scales``: :attr:`~activeseg.data.prepare.Prepared.scales` (``None``: the data was not
    loaded, so the config is described and the text says so)."""
    if d.spatial_dims == 3:
        how = "whole volumes cropped or padded" if d.whole_volume else "cubes tiled from volumes"
        return f"{d.patch_size}³-voxel samples ({how}) {_spacing(d, scales)}"
    return f"{d.patch_size}-pixel patches {_pixel_size(d, scales)}"


def _pixel_size(d: DataConfig, scales: Scales | None) -> str:
    if scales is None:
        if d.pixel_size is None:
            return f"at native pixel size ({NOT_LOADED})"
        return f"at {d.pixel_size:g} µm/pixel ({NOT_LOADED})"
    known = [s[0] for s in scales if s is not None]
    unknown = len(scales) - len(known)
    native = "native pixel size (unknown: no pixel size for the images, so not resampled)"
    if not known:
        return f"at {native}"
    text = f"at {_values(known)} µm/pixel"
    if len(set(known)) > 1:
        text = f"at native pixel sizes {_values(known)} µm/pixel (not resampled)"
    if unknown:
        text += f" for {len(known)} images; {unknown} of {len(scales)} images at {native}"
    return text


def _spacing(d: DataConfig, scales: Scales | None) -> str:
    if scales is None:
        if d.spacing is None:
            return f"at native voxel spacing ({NOT_LOADED})"
        return f"at {d.spacing:g} mm spacing ({NOT_LOADED})"
    spacings = {s for s in scales if s is not None}
    if len(spacings) == 1:
        (one,) = spacings
        if len(set(one)) == 1:
            return f"at {one[0]:g} mm spacing" + ("" if d.spacing else " (native)")
        return f"at {' x '.join(f'{v:g}' for v in one)} mm spacing (native)"
    values = [v for s in spacings for v in s]
    return f"at native voxel spacings {_values(values)} mm (per axis; not resampled)"


def _values(values: Sequence[float]) -> str:
    """``"0.2"`` or ``"0.093-0.18"``."""
    low, high = min(values), max(values)
    return f"{low:g}" if low == high else f"{low:g}–{high:g}"
