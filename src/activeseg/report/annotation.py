"""How the report turns annotated patches into annotation hours, and for which data.

The paper's estimate, myelinated axons (connected components of the ground-truth mask) x
3 minutes, belongs to axon/myelin data. Which estimate a run gets is decided from what its
config says the labels are, never guessed from pixel values:

* **axon/myelin labels** — the 2D phantom (``data.source = synthetic``), or a BIDS
  microscopy dataset whose classes include myelin (``data.labels``, else the label suffix
  ``data.label_suffix``, default ``seg-myelin-manual``, the AxonDeepSeg convention): axons x
  ``minutes_per_axon``.
  (Axon + myelin label maps count the same way: an axon and its sheath are one
  non-background component.)
* **anything else** — a folder of images and masks (whose structure activeseg cannot know),
  a BIDS label that is not myelin, volumes: no hours, unless the user prices the patches:
  ``activeseg report --minutes-per-patch M`` (any data) or ``--minutes-per-axon M`` (2D
  masks the user knows to be myelin: an opt-in).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from activeseg.config import Config
from activeseg.data.sources import is_bids
from activeseg.data.synthetic import SYNTHETIC
from activeseg.errors import UserError
from activeseg.report.verdict import count_axons

MINUTES_PER_AXON = 3.0  # the paper's estimate of manual annotation time per axon
AXON = "axon"
PATCH = "patch"


@dataclass(frozen=True)
class AnnotationCost:
    """``minutes`` per myelinated axon (``unit = "axon"``) or per patch (``"patch"``)."""

    unit: str
    minutes: float
    why: str  # why this estimate applies to the run, for the page

    def units(self, masks: np.ndarray) -> np.ndarray:
        """Counted units of each patch ``[N, 1, *S]``: axons (:func:`count_axons`) or 1."""
        if self.unit == AXON:
            return count_axons(masks)
        return np.ones(len(masks), dtype=np.int64)

    def definition(self) -> str:
        if self.unit == AXON:
            return (
                "Hours = myelinated axons (connected components of the ground truth) in "
                f"those patches x {self.minutes:g} min, the paper's estimate for axon/myelin "
                f"data ({self.why})."
            )
        return f"Hours = patches x {self.minutes:g} min ({self.why})."


def annotation_cost(
    config: Config, minutes_per_axon: float | None = None, minutes_per_patch: float | None = None
) -> tuple[AnnotationCost | None, str]:
    """The annotation cost of a run of ``config``, and a sentence for the page when there is
    none. ``minutes_per_patch`` (any data) or ``minutes_per_axon`` (2D masks; the default
    3 min applies by itself to axon/myelin labels only) set it explicitly."""
    for name, value in (("--minutes-per-axon", minutes_per_axon),
                        ("--minutes-per-patch", minutes_per_patch)):  # fmt: skip
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(f"{name} must be a positive number of minutes, got {value}")
    if minutes_per_axon is not None and minutes_per_patch is not None:
        raise UserError("give --minutes-per-axon or --minutes-per-patch, not both")
    if minutes_per_patch is not None:
        return AnnotationCost(PATCH, minutes_per_patch, "the per-patch cost given"), ""
    volumes = config.data.spatial_dims == 3
    if minutes_per_axon is not None:
        if volumes:
            raise UserError(
                "--minutes-per-axon counts myelinated axons in 2D masks; for volumes give "
                "--minutes-per-patch"
            )
        return AnnotationCost(AXON, minutes_per_axon, "the per-axon cost given"), ""
    labels = myelin_labels(config)
    if labels:
        return AnnotationCost(AXON, MINUTES_PER_AXON, labels), ""
    kind = (
        "volumes"
        if volumes
        else f"labels of {config.data.source}, which are not known to be myelin"
    )
    return None, (
        "Annotation hours are left out: the paper's estimate counts myelinated axons and "
        f"belongs to axon/myelin data; this run has {kind}. Price the patches with "
        "`activeseg report RUN_DIR --minutes-per-patch M`"
        + ("." if volumes else " (or `--minutes-per-axon M` if the masks are myelin).")
    )


def myelin_labels(config: Config) -> str:
    """Why the run's 2D labels are myelin ('' if they are not known to be): the phantom,
    or BIDS derivatives whose label suffix names myelin."""
    d = config.data
    if d.spatial_dims != 2:
        return ""
    if d.source == SYNTHETIC:
        return "the phantom's myelin masks"
    if "myelin" in d.class_names and is_bids(Path(d.source).expanduser()):
        return f"BIDS labels {', '.join(f'*{s}' for s in d.mask_suffixes)}"
    return ""
