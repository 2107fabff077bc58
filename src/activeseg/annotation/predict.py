"""Segmenting whole images of any size: sliding-window inference with Gaussian blending.

An image is resampled to the model's pixel size, normalised with the project's normaliser
and cut into overlapping ``patch_size`` windows by MONAI's ``sliding_window_inference``; the
window outputs are blended with a Gaussian weight (window borders, where a U-Net sees the
least context, count least) and resized back to the image's own pixels. Images smaller than
a window are padded by edge replication. Outputs follow AxonDeepSeg's naming:
``<stem>_seg-myelin.png`` (0/255), plus with ``uncertainty`` ``<stem>_uncertainty.tif``: the
per-pixel MC-dropout std (float32; 0 = certain, 0.5 the largest possible), blended like the
probabilities.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch
from monai.inferers import sliding_window_inference
from tqdm.auto import tqdm

from activeseg.annotation.project import Project
from activeseg.data.images import read_image, write_mask_png
from activeseg.data.patches import Normalizer, resample, resize
from activeseg.data.sources import ImageFile, Sample, find_images, image_file
from activeseg.errors import UserError
from activeseg.files import atomic_write_bytes
from activeseg.learners import ModelLearner
from activeseg.runtime import derive_seed

SEG_SUFFIX = "_seg-myelin"
UNCERTAINTY_SUFFIX = "_uncertainty"


@dataclass(frozen=True)
class Window:
    """How to slide: ``size`` px windows overlapping by ``overlap`` (fraction), ``batch``
    windows per forward pass; ``mc_samples`` > 0 also gives the MC-dropout std."""

    size: int
    overlap: float = 0.25
    batch: int = 4
    uncertainty: bool = False
    seed: int = 0


def segment(
    learner: ModelLearner, image: np.ndarray, window: Window
) -> tuple[np.ndarray, np.ndarray | None]:
    """Probability ``[H, W]`` float32 (and the MC std ``[H, W]`` or ``None``) of a normalised
    ``image`` ``[H, W]`` at the model's pixel size, by the trained network(s) of ``learner``
    (MC dropout with the learner's ``scoring`` settings; a committee's members)."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    counter = [0]

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        if not window.uncertainty:
            return learner.probabilities(batch)
        ids = list(range(counter[0], counter[0] + len(batch)))
        counter[0] += len(batch)
        stats = learner.mc(batch, ids, window.seed)
        return torch.cat([stats.mean[:, :1], stats.std[:, :1]], 1)

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
    return maps[0], (maps[1] if window.uncertainty else None)


def segment_file(
    learner: ModelLearner,
    image: np.ndarray,
    pixel_size: float | None,
    model_pixel_size: float | None,
    window: Window,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Probability and optional std of ``image`` ``[H, W]`` (in [0, 1], ``pixel_size`` µm),
    at the image's own pixels; the image is standardised by its own mean and std (see
    :func:`activeseg.data.prepare.image_normalizer`)."""
    sample = Sample("image", image, np.zeros(image.shape, np.uint8), pixel_size)
    small = resample(sample, model_pixel_size).image
    prob, std = segment(learner, Normalizer.fit(small)(small), window)
    if prob.shape != image.shape:
        prob = resize(prob, image.shape)
        std = None if std is None else resize(std, image.shape)
    return prob, std


def predict_images(
    project: Project,
    inputs: Sequence[Path],
    out: Path,
    *,
    uncertainty: bool = False,
    pixel_size: float | None = None,
    channel: int | None = None,
    overlap: float = 0.25,
    progress: bool = False,
) -> list[Path]:
    """Write ``out/<stem>_seg-myelin.png`` (and ``<stem>_uncertainty.tif``) for every image
    of ``inputs`` (files, plain folders or BIDS datasets); returns the mask files.

    The pixel size of an image is ``pixel_size`` if given, else its BIDS sidecar's or file
    metadata's, else that of the project image of the same name, else the project images'
    common pixel size. ``channel``: of multi-channel images (default: the project's).
    """
    if not 0 <= overlap < 1:
        raise UserError(f"--overlap must be in [0, 1), got {overlap}")
    files = _input_files(inputs, pixel_size, project.config.data.modality)
    learner, cfg = project.load_learner(), project.config
    window = Window(
        size=cfg.data.patch_size,
        overlap=overlap,
        uncertainty=uncertainty,
        seed=derive_seed(cfg.loop.seed, "predict"),
    )
    written = []
    for f in tqdm(files, desc="predict", unit="image", disable=not progress):
        size = _pixel_size(project, f, pixel_size)
        image = read_image(f.path, cfg.data.channel if channel is None else channel)
        prob, std = segment_file(learner, image, size, cfg.data.pixel_size, window)
        target = out / f"{f.name}{SEG_SUFFIX}.png"
        write_mask_png(target, (prob >= cfg.scoring.threshold).astype(np.uint8))
        if std is not None:
            buffer = io.BytesIO()
            tifffile.imwrite(buffer, std.astype(np.float32))
            atomic_write_bytes(out / f"{f.name}{UNCERTAINTY_SUFFIX}.tif", buffer.getvalue())
        written.append(target)
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


def _pixel_size(project: Project, f: ImageFile, given: float | None) -> float | None:
    if given is not None or f.pixel_size is not None:
        return given if given is not None else f.pixel_size
    own = {i.name: i.pixel_size for i in project.settings.images}
    if f.name in own:
        return own[f.name]
    sizes = set(own.values())
    if project.config.data.pixel_size is not None and (len(sizes) != 1 or None in sizes):
        raise UserError(
            f"{f.path}: unknown pixel size and the project's images differ in pixel size; "
            "give --pixel-size (µm per pixel)"
        )
    return sizes.pop() if len(sizes) == 1 else None
