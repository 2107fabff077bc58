"""The images of an annotation project and what a round trains and scores on.

:class:`ProjectImages` reads each project image once, resamples it to ``data.pixel_size``
and normalises it by its own normaliser (``project.json``); from them it assembles the
training patches (annotated regions), the held-out patches (images given at
``init --holdout``) and the candidate windows (every free window of the other images) of one
round (:class:`RoundData`). Regions are in original pixels; patches and windows are
``data.patch_size`` square after resampling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from activeseg.annotation import masks
from activeseg.annotation.regions import free_windows
from activeseg.annotation.state import Annotation, ProjectImage, Region, State
from activeseg.config import Config
from activeseg.data.images import read_image
from activeseg.data.patches import PatchSet, resample, tile
from activeseg.data.sources import Sample
from activeseg.errors import UserError
from activeseg.learners import LearnerData
from activeseg.train import Labelled


@dataclass(frozen=True)
class RoundData:
    """What one round trains and scores on: ``data.images`` holds the candidate ``windows``
    (ids ``0 .. W-1``, their ``regions``) and then the training patches (ids ``train``, masks
    ``masks``); validation on the held-out patches (``holdout``) or, without any, on the
    training patches."""

    data: LearnerData
    windows: PatchSet
    regions: list[Region]
    train: np.ndarray
    masks: np.ndarray
    holdout: bool


class ProjectImages:
    """The images ``entries`` of the project ``root`` under ``config`` (read once, cached)."""

    def __init__(self, root: Path, entries: Sequence[ProjectImage], config: Config) -> None:
        self.root = Path(root)
        self.config = config
        self.entries = tuple(entries)
        self._by_name = {i.name: i for i in self.entries}
        self._cache: dict[tuple[str, bool], np.ndarray] = {}

    def entry(self, name: str) -> ProjectImage:
        """The record of image ``name`` (file, pixel size, normaliser, held out or not)."""
        return self._by_name[name]

    def image(self, name: str, resampled: bool = False) -> np.ndarray:
        """Image ``name`` float32 ``[H, W]`` in [0, 1], original or at ``data.pixel_size``."""
        key = (name, resampled)
        if key not in self._cache:
            if resampled:
                sample = self._sample(name, self.image(name), None)
                self._cache[key] = resample(sample, self.config.data.pixel_size).image
            else:
                path = self.root / self._by_name[name].file
                self._cache[key] = read_image(path, self.config.data.channel)
        return self._cache[key]

    def read_annotation(self, a: Annotation) -> np.ndarray:
        """The stored mask or label map ``[h, w]`` (uint8) of ``a``."""
        return masks.read_annotation(self.root / a.mask, self.config.data.num_classes)

    def scale(self, name: str) -> float:
        """Resampled pixels per original pixel of image ``name`` (1 without resampling)."""
        target, own = self.config.data.pixel_size, self._by_name[name].pixel_size
        return 1.0 if target is None or own is None else own / target

    def training(self, state: State) -> list[Annotation]:
        """The annotations of ``state`` that are trained on (not on a held-out image)."""
        return [a for a in state.annotations if not self._by_name[a.region.image].holdout]

    def _sample(self, name: str, image: np.ndarray, mask: np.ndarray | None) -> Sample:
        mask = np.zeros(image.shape, dtype=np.uint8) if mask is None else mask
        return Sample(name, image, mask, self._by_name[name].pixel_size)

    def patches(self, annotations: Sequence[Annotation]) -> PatchSet | None:
        """The annotated regions, normalised by their image's normaliser, resampled and
        tiled into ``data.patch_size`` patches (images float32 normalised, masks {0, 1})."""
        samples = [
            dataclasses.replace(
                self._sample(
                    a.region.image,
                    self._by_name[a.region.image].normalizer(
                        a.region.crop(self.image(a.region.image))
                    ),
                    self.read_annotation(a),
                ),
                name=a.id,
            )
            for a in annotations
        ]
        if not samples:
            return None
        resampled = [resample(s, self.config.data.pixel_size) for s in samples]
        return tile(resampled, self.config.data.patch_size)

    def candidates(self, state: State) -> tuple[PatchSet, list[Region]]:
        """The windows (normalised resampled patches) that may be queried and their regions
        in original pixels: the centred patch grid of every image that is not held out,
        minus windows overlapping an annotated or pending region."""
        names = [i.name for i in self.entries if not i.holdout]
        samples = [
            self._sample(n, self._by_name[n].normalizer(self.image(n, resampled=True)), None)
            for n in names
        ]
        taken = [a.region for a in state.annotations] + [q.region for q in state.pending]
        scales = {n: self.scale(n) for n in names}
        shapes = {n: self.image(n).shape for n in names}
        return free_windows(samples, self.config.data.patch_size, scales, shapes, taken)

    def round_data(self, state: State) -> RoundData:
        """The candidate windows and the training and held-out patches of ``state`` (no
        training patches before anything is annotated, for a project started from a
        model)."""
        train_ann = self.training(state)
        train = self.patches(train_ann)
        if train_ann and (train is None or len(train) == 0):
            raise UserError("the annotated regions give no patch; check data.patch_size")
        held_ann = [a for a in state.annotations if self._by_name[a.region.image].holdout]
        held = self.patches(held_ann)
        windows, regions = self.candidates(state)
        parts = [windows.images] + ([train.images] if train is not None else [])
        images = torch.from_numpy(np.concatenate(parts))
        ids = np.arange(len(windows), len(images))
        labels = train.masks if train is not None else np.zeros((0, *windows.images.shape[1:]))
        source = held if held is not None else train
        val = (
            Labelled(torch.from_numpy(source.images), torch.from_numpy(source.masks).float())
            if source is not None
            else Labelled(images[:0], images[:0])
        )
        return RoundData(LearnerData(images, val), windows, regions, ids, labels, held is not None)
