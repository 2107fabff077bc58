"""The records of an annotation project: images, regions, annotations, queries, training
rounds, and their JSON files (``project.json`` and ``state.json``).

A region is a rectangle in the *original* pixels of a project image; ``state.json`` is the
one record of what is annotated, pending and trained.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from activeseg.data.patches import Normalizer
from activeseg.data.prepare import PER_IMAGE
from activeseg.errors import UserError

PROJECT_SCHEMA = 1
MASK_SUFFIX = "_seg-myelin-manual"
PRED_SUFFIX = "_seg-myelin-pred"
LABELS_SUFFIX = "_seg-labels"
"""A stored label map (values 0 .. C-1) of a project with several classes."""
HEATMAP_SUFFIX = "_uncertainty"
DEFAULT_K = 4
"""Regions per query when ``-k`` is not given."""
TO_ANNOTATE = "to_annotate"


@dataclass(frozen=True)
class Region:
    """A rectangle of a project image in its original pixels: top-left ``(row, col)``,
    ``height`` x ``width``."""

    image: str
    row: int
    col: int
    height: int
    width: int

    def overlaps(self, other: Region) -> bool:
        return (
            self.image == other.image
            and self.row < other.row + other.height
            and other.row < self.row + self.height
            and self.col < other.col + other.width
            and other.col < self.col + self.width
        )

    def crop(self, array: np.ndarray) -> np.ndarray:
        """``array[row:row+height, col:col+width]`` of an ``[H, W]`` image of this region."""
        return array[self.row : self.row + self.height, self.col : self.col + self.width]


@dataclass(frozen=True)
class Annotation:
    """A stored mask: ``mask`` is its path in the project; ``source`` ``init`` (a whole image
    given at init) or ``query``; ``pre_dice`` the Dice of the model's pre-annotation against
    it (queried regions with a pre-annotation only)."""

    id: str
    region: Region
    mask: str
    source: str
    pre_dice: float | None = None


@dataclass(frozen=True)
class Query:
    """A region offered for annotation; ``round`` is the training round whose model chose it."""

    id: str
    region: Region
    score: float
    strategy: str
    round: int


@dataclass(frozen=True)
class Round:
    """One training: ``n_regions`` annotated regions (held-out ones excluded) giving
    ``n_patches`` patches; ``val_dice`` on the held-out images (``None`` without any);
    ``annotations``: the ids trained on."""

    round: int
    n_regions: int
    n_patches: int
    val_dice: float | None
    seconds: float
    annotations: tuple[str, ...]
    committee: str | None = None  # the kind of the trained committee; None: one network
    model: str | None = None  # round 0 of `init --model`: the file adopted (no training)


@dataclass(frozen=True)
class State:
    """What is annotated, pending and trained so far (``state.json``)."""

    annotations: tuple[Annotation, ...] = ()
    pending: tuple[Query, ...] = ()
    rounds: tuple[Round, ...] = ()
    next_query: int = 1


@dataclass(frozen=True)
class ProjectImage:
    """An image of the project: ``file`` relative to the project, ``pixel_size`` µm,
    ``mean`` / ``std`` of its intensities at the model's pixel size (its normaliser)."""

    name: str
    file: str
    pixel_size: float | None
    mean: float
    std: float
    holdout: bool = False

    @property
    def normalizer(self) -> Normalizer:
        return Normalizer(self.mean, self.std)


@dataclass(frozen=True)
class Settings:
    """``project.json``: fixed at init."""

    images: tuple[ProjectImage, ...]
    mask_suffix: str = MASK_SUFFIX
    strategy: str = "std_edt"
    normalizer: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(PER_IMAGE))
    """How the project's models standardise images (each image's mean/std are in
    ``images``): ``per_image``, or ``global`` when started from a model trained so."""


# --------------------------------------------------------------------------- JSON


def state_to_json(state: State) -> str:
    return json.dumps({"schema": PROJECT_SCHEMA, **dataclasses.asdict(state)}, indent=1)


def state_from_json(data: dict[str, Any], where: Path) -> State:
    check_schema(data, where)
    try:
        return State(
            annotations=tuple(
                Annotation(**{**a, "region": Region(**a["region"])}) for a in data["annotations"]
            ),
            pending=tuple(Query(**{**q, "region": Region(**q["region"])}) for q in data["pending"]),
            rounds=tuple(
                Round(**{**r, "annotations": tuple(r["annotations"])}) for r in data["rounds"]
            ),
            next_query=int(data["next_query"]),
        )
    except (KeyError, TypeError) as exc:
        raise UserError(f"{where} is damaged ({exc!r}); restore it from a copy") from exc


def check_schema(data: dict[str, Any], where: Path) -> None:
    if not isinstance(data, dict) or data.get("schema") != PROJECT_SCHEMA:
        raise UserError(
            f"{where}: not an activeseg project file of schema {PROJECT_SCHEMA}; it was "
            "written by another version of activeseg"
        )


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc
    check_schema(data, path)
    return dict(data)
