"""Where pixel sizes come from besides a flag: BIDS JSON sidecars (:func:`bids_pixel_size`)
and the image files themselves (:func:`file_pixel_size`).

The files' own metadata are used only when neither a flag (``--pixel-size``) nor a BIDS
sidecar gives the pixel size. In order of trust:

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

import json
import math
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import tifffile

from activeseg.data.images import image_stem
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


# ----------------------------------------------------------------------------- BIDS sidecars

SIDECAR_UNITS_UM = {"um": 1.0, "µm": 1.0, "μm": 1.0, "nm": 1e-3, "mm": 1e3}
"""``PixelSizeUnits`` of BIDS microscopy sidecars in µm."""


def bids_sidecars(root: Path, image_path: Path, modality: str) -> list[Path]:
    """JSON sidecars applying to ``image_path``, most general first (BIDS inheritance).

    A sidecar applies when it lies in the image's folder or a parent up to ``root``, has
    the suffix ``modality`` and its entities (``sub-x``, ``sample-y``, …) are a subset of
    the image's. Within a folder, fewer entities = more general.
    """
    image_entities = set(image_stem(image_path).split("_")[:-1])
    folders = [image_path.parent, *image_path.parent.parents]
    folders = folders[: folders.index(root) + 1][::-1]
    found = []
    for depth, folder in enumerate(folders):
        for sidecar in folder.glob(f"*{modality}.json"):
            *entities, suffix = sidecar.stem.split("_")
            if suffix == modality and set(entities) <= image_entities:
                found.append((depth, len(entities), sidecar))
    return [sidecar for *_, sidecar in sorted(found)]


def bids_pixel_size(root: Path, image_path: Path, modality: str) -> float:
    """Isotropic pixel size in µm from the merged sidecars of ``image_path``, else from the
    file's own metadata."""
    sidecars = bids_sidecars(root, image_path, modality)
    merged: dict[str, object] = {}
    origin: dict[str, Path] = {}
    for sidecar in sidecars:
        meta = _read_json(sidecar)
        merged.update(meta)
        origin.update(dict.fromkeys(meta, sidecar))
    if "PixelSize" not in merged and (size := file_pixel_size(image_path)) is not None:
        return size
    if "PixelSize" not in merged:
        looked = ", ".join(str(p) for p in sidecars) or f"no {modality} sidecar found"
        raise UserError(
            f"no PixelSize for {image_path} (sidecars: {looked}); add "
            '"PixelSize": [x, y] and "PixelSizeUnits": "um" to its JSON sidecar.'
        )
    where = origin["PixelSize"]
    values = merged["PixelSize"]
    values = values if isinstance(values, list) else [values]
    if not 1 <= len(values) <= 3:
        raise UserError(f'{where}: "PixelSize" must be a list [x, y], got {values!r}')
    sizes = [checked_pixel_size(v, f'"PixelSize" in {where}') for v in values[:2]]
    if not math.isclose(min(sizes), max(sizes), rel_tol=1e-6):
        raise UserError(
            f'{where}: anisotropic "PixelSize" {values!r}; activeseg needs square pixels '
            "(x = y): resample the image to square pixels and update the sidecar."
        )
    units = merged.get("PixelSizeUnits", "um")
    if units not in SIDECAR_UNITS_UM:
        raise UserError(
            f'{origin.get("PixelSizeUnits", where)}: unknown "PixelSizeUnits" {units!r}; '
            f"use one of {_unit_names()}."
        )
    return sizes[0] * SIDECAR_UNITS_UM[str(units)]


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read JSON sidecar {path}: {exc}; fix its syntax.") from exc
    if not isinstance(data, dict):
        raise UserError(
            f"JSON sidecar {path} must hold an object {{...}}, not {type(data).__name__}"
        )
    return data


def checked_pixel_size(value: object, where: str) -> float:
    """``value`` as a positive finite float, else a UserError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{where}: pixel size must be a positive number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{where}: pixel size must be a positive number, got {value!r}")
    return float(value)


def _unit_names() -> str:
    return ", ".join(SIDECAR_UNITS_UM)
