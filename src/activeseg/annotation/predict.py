"""Segmenting whole images of any size: sliding-window inference with Gaussian blending.

An image is resampled to the model's pixel size, normalised as the model's inputs were (its
own mean and std, as every model's inputs are) and cut into overlapping ``patch_size``
windows by MONAI's ``sliding_window_inference``; the window outputs are blended with a
Gaussian weight (window borders, where a U-Net sees the least context, count least) and
resized back to the image's own pixels. Images smaller than a window are padded by edge
replication.

Outputs follow AxonDeepSeg's naming: ``<stem>_seg-<class>.png`` (0/255) per foreground class
(``<stem>_seg-myelin.png`` for the binary myelin model) and, for an axon + myelin model,
``<stem>_seg-axonmyelin.png`` (axon 255, myelin 127, background 0, as AxonDeepSeg writes
it); with ``uncertainty`` also ``<stem>_uncertainty.tif``: the per-pixel MC-dropout std
(float32, averaged over the classes of a multi-class model; 0 = certain), blended like the
probabilities.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from monai.inferers import sliding_window_inference

from activeseg.config import Config
from activeseg.console import progress_bar
from activeseg.data.images import read_image, write_gray_png, write_mask_png
from activeseg.data.patches import Normalizer, resample, resize
from activeseg.data.sources import ImageFile, Sample, find_images, image_file
from activeseg.errors import UserError
from activeseg.files import atomic_write_bytes
from activeseg.learners import ModelLearner
from activeseg.model import predicted_labels
from activeseg.runtime import derive_seed

UNCERTAINTY_SUFFIX = "_uncertainty"
AXONMYELIN = ("axon", "myelin")
"""The classes of AxonDeepSeg's combined ``_seg-axonmyelin.png`` (values 255 and 127)."""
AXONMYELIN_VALUES = {"axon": 255, "myelin": 127}


@dataclass(frozen=True)
class Window:
    """How to slide: ``size`` px windows overlapping by ``overlap`` (fraction), ``batch``
    windows per forward pass; ``uncertainty`` also gives the MC-dropout std."""

    size: int
    overlap: float = 0.25
    batch: int = 4
    uncertainty: bool = False
    seed: int = 0


@dataclass(frozen=True)
class Segmenter:
    """A trained ``learner`` with what whole images need: its ``config`` (pixel size, window
    size, threshold, class names, channel) and ``normalizer`` (the checkpoint's,
    :data:`~activeseg.data.prepare.PER_IMAGE`: each image by its own mean and std)."""

    learner: ModelLearner
    config: Config
    normalizer: Mapping[str, Any]

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """``image`` ``[H, W]`` at the model's pixel size, standardised as its inputs were."""
        return Normalizer.fit(image)(image)


def segment(
    learner: ModelLearner, image: np.ndarray, window: Window
) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities ``[C, H, W]`` float32 (and the MC std ``[H, W]`` or ``None``) of a
    normalised ``image`` ``[H, W]`` at the model's pixel size, by the trained network(s) of
    ``learner`` (MC dropout with the learner's ``scoring`` settings; a committee's members).
    C = 1 (the foreground of a sigmoid model) or the number of classes."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    counter = [0]

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        if not window.uncertainty:
            return learner.probabilities(batch)
        ids = list(range(counter[0], counter[0] + len(batch)))
        counter[0] += len(batch)
        stats = learner.mc(batch, ids, window.seed)
        return torch.cat([stats.mean, stats.std.mean(1, keepdim=True)], 1)

    with torch.inference_mode():
        out = sliding_window_inference(
            x,
            roi_size=(window.size, window.size),
            sw_batch_size=window.batch,
            predictor=predictor,
            overlap=window.overlap,
            mode="gaussian",
            padding_mode="replicate",
        )
    assert isinstance(out, torch.Tensor)
    maps = out[0].float().numpy()
    if window.uncertainty:
        return maps[:-1], maps[-1]
    return maps, None


def segment_file(
    model: Segmenter, image: np.ndarray, pixel_size: float | None, window: Window
) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities ``[C, H, W]`` and optional std ``[H, W]`` of ``image`` ``[H, W]`` (in
    [0, 1], ``pixel_size`` µm) at the image's own pixels."""
    sample = Sample("image", image, np.zeros(image.shape, np.uint8), pixel_size)
    small = resample(sample, model.config.data.pixel_size).image
    probs, std = segment(model.learner, model.normalize(small), window)
    if probs.shape[1:] != image.shape:
        probs = np.stack([resize(p, image.shape) for p in probs])
        std = None if std is None else resize(std, image.shape)
    return probs, std


def write_segmentation(
    out: Path, stem: str, probs: np.ndarray, threshold: float, classes: Sequence[str]
) -> list[Path]:
    """Write the masks of probabilities ``probs`` ``[C, H, W]`` in AxonDeepSeg's naming
    (module docstring) for the foreground ``classes``; the files written."""
    labels = predicted_labels(torch.from_numpy(probs)[None], threshold)[0].numpy()
    written = []
    for k, name in enumerate(classes, start=1):
        written.append(out / f"{stem}_seg-{name}.png")
        write_mask_png(written[-1], (labels == k).astype(np.uint8))
    if (combined := axonmyelin(labels, classes)) is not None:
        written.append(out / f"{stem}_seg-axonmyelin.png")
        write_gray_png(written[-1], combined)
    return written


def axonmyelin(labels: np.ndarray, classes: Sequence[str]) -> np.ndarray | None:
    """AxonDeepSeg's combined image uint8 ``[H, W]`` (axon 255, myelin 127, else 0) of a
    label map ``[H, W]`` whose foreground ``classes`` include axon and myelin, else
    ``None``."""
    if not set(AXONMYELIN) <= set(classes):
        return None
    combined = np.zeros(labels.shape, np.uint8)
    for name in AXONMYELIN:
        combined[labels == list(classes).index(name) + 1] = AXONMYELIN_VALUES[name]
    return combined


def predict_images(
    model: Segmenter,
    inputs: Sequence[Path],
    out: Path,
    *,
    uncertainty: bool = False,
    pixel_size: float | None = None,
    channel: int | None = None,
    overlap: float = 0.25,
    progress: bool = False,
    known_sizes: Mapping[str, float | None] | None = None,
) -> list[Path]:
    """Write the masks (and ``<stem>_uncertainty.tif``) of every image of ``inputs`` (files,
    plain folders or BIDS datasets) to ``out``; returns the mask files.

    The pixel size of an image is ``pixel_size`` if given, else its BIDS sidecar's or file
    metadata's, else ``known_sizes`` (a project's images: by name, else their common size);
    an image without one is used at its own size, with a warning when the model was trained
    at a pixel size. ``channel``: of multi-channel images (default: the model's).
    """
    if not 0 <= overlap < 1:
        raise UserError(f"--overlap must be in [0, 1), got {overlap}")
    cfg = model.config
    files = _input_files(inputs, pixel_size, cfg.data.modality)
    window = Window(
        size=cfg.data.patch_size,
        overlap=overlap,
        uncertainty=uncertainty,
        seed=derive_seed(cfg.loop.seed, "predict"),
    )
    written = []
    for f in progress_bar(files, desc="predict", unit="image", enabled=progress):
        size = pixel_size_of(f, pixel_size, known_sizes or {}, cfg.data.pixel_size)
        image = read_image(f.path, cfg.data.channel if channel is None else channel)
        probs, std = segment_file(model, image, size, window)
        threshold, classes = cfg.scoring.threshold, cfg.data.class_names
        written += write_segmentation(out, f.name, probs, threshold, classes)
        if std is not None:
            buffer = io.BytesIO()
            tifffile.imwrite(buffer, std.astype(np.float32))
            atomic_write_bytes(out / f"{f.name}{UNCERTAINTY_SUFFIX}.tif", buffer.getvalue())
    return written


def _input_files(
    inputs: Sequence[Path], pixel_size: float | None, modality: str
) -> list[ImageFile]:
    files: list[ImageFile] = []
    for path in map(Path, inputs):
        if path.is_dir():
            files += find_images(path, pixel_size=pixel_size, modality=modality)
        elif path.is_file():
            files.append(image_file(path, pixel_size))
        else:
            raise UserError(f"{path}: no such image or folder")
    if not files:
        raise UserError("no images to segment")
    return files


def pixel_size_of(
    f: ImageFile,
    given: float | None,
    known: Mapping[str, float | None],
    model_pixel_size: float | None,
) -> float | None:
    """The pixel size of ``f`` (see :func:`predict_images`)."""
    if given is not None or f.pixel_size is not None:
        return given if given is not None else f.pixel_size
    if f.name in known:
        return known[f.name]
    sizes = set(known.values())
    if model_pixel_size is not None and (len(sizes) > 1 or None in sizes):
        raise UserError(
            f"{f.path}: unknown pixel size and the project's images differ in pixel size; "
            "give --pixel-size (µm per pixel)"
        )
    if len(sizes) == 1:
        return sizes.pop()
    if model_pixel_size is not None:
        warnings.warn(
            f"{f.path}: no pixel size (no --pixel-size, sidecar or metadata): segmented at its "
            f"own size, though the model works at {model_pixel_size} µm; give --pixel-size",
            stacklevel=3,
        )
    return None
