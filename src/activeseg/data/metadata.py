"""Pixel sizes stored in image files: OME-TIFF, ImageJ TIFF and TIFF resolution tags.

Used only when neither a flag (``--pixel-size``) nor a BIDS sidecar gives the pixel size.
In order of trust:

1. OME-XML ``Pixels`` ``PhysicalSizeX`` / ``PhysicalSizeY`` with their units
   (``PhysicalSizeXUnit``, default µm), as microscope software and ``tifffile`` write them;
2. ImageJ / Fiji TIFFs: the ``unit`` of the ImageJ description with the resolution tags
   (pixels per unit);
3. the TIFF resolution tags with ``ResolutionUnit`` centimetre or inch. A resolution in
   inches of 72, 96, 150, 300 or 600 pixels is a document default that drawing programs
   write, not a measurement (it would mean pixels of 42 to 353 µm), and is ignored.

Pixel sizes are isotropic µm per pixel; x and y that differ are refused, as for sidecars.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import tifffile

from activeseg.errors import UserError

UNITS_UM = {
    "m": 1e6,
    "cm": 1e4,
    "mm": 1e3,
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "\\u00b5m": 1.0,  # ImageJ writes µ escaped in its description
    "nm": 1e-3,
    "å": 1e-4,
    "pm": 1e-6,
}
"""Length units of OME and ImageJ metadata in µm (keys lower-cased)."""

DOCUMENT_DPI = (72.0, 96.0, 150.0, 300.0, 600.0)
"""Resolutions in pixels per inch that programs write by default (ignored)."""

_TIFF_SUFFIXES = (".tif", ".tiff")
_RESOLUTION_UNIT_UM = {2: 25_400.0, 3: 10_000.0}  # TIFF ResolutionUnit: inch, centimetre


def file_pixel_size(path: Path) -> float | None:
    """The isotropic pixel size in µm stored in the TIFF ``path``, or ``None`` (not a TIFF,
    unreadable, or no usable metadata; see the module docstring).

    Raises:
        UserError: the metadata give different x and y pixel sizes.
    """
    path = Path(path)
    if path.suffix.lower() not in _TIFF_SUFFIXES or not path.is_file():
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            sizes = _ome_sizes(tif.ome_metadata) if tif.is_ome else None
            page = tif.pages[0]
            if sizes is None and tif.is_imagej:
                sizes = _imagej_sizes(tif.imagej_metadata or {}, page)
            if sizes is None:
                sizes = _tag_sizes(page)
    except (OSError, ValueError, tifffile.TiffFileError, ElementTree.ParseError):
        return None  # reading the image itself reports a damaged file
    if sizes is None:
        return None
    x, y = sizes
    if not (math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0):
        return None
    if not math.isclose(x, y, rel_tol=1e-4):
        raise UserError(
            f"{path}: its metadata give anisotropic pixels ({x:g} x {y:g} µm); activeseg "
            "needs square pixels: resample the image, or give --pixel-size"
        )
    return x


def _ome_sizes(xml: str | None) -> tuple[float, float] | None:
    """PhysicalSizeX/Y in µm of the first ``Pixels`` element of OME-XML."""
    if not xml:
        return None
    root = ElementTree.fromstring(xml)
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None
    out = []
    for axis in "XY":
        value = pixels.attrib.get(f"PhysicalSize{axis}", pixels.attrib["PhysicalSizeX"])
        unit = pixels.attrib.get(f"PhysicalSize{axis}Unit", "µm")
        scale = UNITS_UM.get(unit.lower())
        if scale is None:
            return None
        out.append(float(value) * scale)
    return out[0], out[1]


def _resolution(page: Any) -> tuple[float, float] | None:
    """Pixels per resolution unit (x, y) of a TIFF page's resolution tags."""
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    values = []
    for name in ("XResolution", "YResolution"):
        num, den = tags[name].value
        if not num or not den:
            return None
        values.append(num / den)
    return values[0], values[1]


def _imagej_sizes(meta: dict[str, Any], page: Any) -> tuple[float, float] | None:
    """ImageJ: resolution tags in pixels per ``unit``."""
    scale = UNITS_UM.get(str(meta.get("unit", "")).lower())
    resolution = _resolution(page)
    if scale is None or resolution is None:
        return None
    return scale / resolution[0], scale / resolution[1]


def _tag_sizes(page: Any) -> tuple[float, float] | None:
    """Plain TIFF: resolution tags in pixels per inch or centimetre."""
    unit = page.tags.get("ResolutionUnit")
    scale = _RESOLUTION_UNIT_UM.get(int(unit.value)) if unit is not None else None
    resolution = _resolution(page)
    if scale is None or resolution is None:
        return None
    if int(unit.value) == 2 and any(
        math.isclose(r, d, rel_tol=1e-6) for r in resolution for d in DOCUMENT_DPI
    ):
        return None
    return scale / resolution[0], scale / resolution[1]
