"""Creating an annotation project: check the user's images and masks, then copy them in.

Everything is checked before the project folder is created, so bad input leaves nothing
behind. Each image gets its intensity normaliser (:func:`activeseg.data.prepare.image_normalizer`)
at the model's pixel size.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from activeseg.acquisition import get_strategy
from activeseg.annotation.masks import MaskNames, store_annotation
from activeseg.annotation.project import Project
from activeseg.annotation.state import (
    HEATMAP_SUFFIX,
    MASK_SUFFIX,
    PER_IMAGE,
    PROJECT_SCHEMA,
    TO_ANNOTATE,
    Annotation,
    ProjectImage,
    Region,
    State,
    state_to_json,
)
from activeseg.config import Config, save_yaml, to_dict, with_overrides
from activeseg.console import progress_bar
from activeseg.data.images import (
    IMAGE_SUFFIXES,
    image_stem,
    read_image,
    read_mask,
    split_name,
)
from activeseg.data.prepare import image_normalizer
from activeseg.data.sources import MASK_SUFFIXES, ImageFile, combine_masks, find_images
from activeseg.environment import describe, record_environment
from activeseg.errors import UserError
from activeseg.files import acquire_lock, atomic_write_bytes, atomic_write_text
from activeseg.learners import read_checkpoint
from activeseg.modelfiles import read_model_file
from activeseg.presets import preset
from activeseg.runtime import resolve
from activeseg.validation import validate


def init_project(
    root: Path,
    images: Path,
    *,
    masks: Path | None = None,
    pixel_size: float | None = None,
    preset_name: str = "cpu",
    base: Config | None = None,
    overrides: dict[str, Any] | None = None,
    holdout: Sequence[str] = (),
    mask_suffix: str = MASK_SUFFIX,
    strategy: str = "std_edt",
    model: Path | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> Project:
    """Create the project ``root`` from the images of ``images`` (BIDS or a folder) and the
    whole-image masks found in ``masks`` (``<image stem><suffix>.png|tif``, any depth; with
    ``data.labels`` one mask ``<image stem>_seg-<label>-manual`` per class).

    Everything is checked before the folder is created: bad input leaves nothing behind.
    ``holdout`` names labelled images kept for validation only. ``model``: a model file
    (``activeseg export``) the project starts from (:func:`adopted_config`); it is round 0,
    queried with before any training. Settings start from ``base`` (e.g. another project's or
    a run's ``config.yaml``) else the preset ``preset_name``; ``overrides`` come last.
    """
    root = Path(root)
    payload: dict[str, Any] | None = None
    if model is None:
        config = with_overrides(base or preset(preset_name), overrides or {})
    else:
        payload = read_model_file(Path(model))
        model_config, payload = read_checkpoint(payload, str(model))
        initial = base or preset(preset_name)
        config = adopted_config(initial, model_config, overrides or {}, Path(model))
    validate(config)
    if config.data.spatial_dims != 2:
        raise UserError(
            f"data.spatial_dims={config.data.spatial_dims}: projects annotate 2D images only "
            "(a 3D U-Net cannot score their windows); use --set data.spatial_dims=2, or "
            "`activeseg simulate` for volumes"
        )
    get_strategy(strategy, config.scoring)
    names = MaskNames.of(config.data.labels, mask_suffix)
    skip = (*names.manual, *names.pred, *MASK_SUFFIXES, HEATMAP_SUFFIX)
    files = [
        f
        for f in find_images(images, pixel_size=pixel_size, modality=config.data.modality)
        if not f.name.endswith(skip)
    ]
    if not files:
        raise UserError(f"no images in {images} (files ending in a mask suffix are skipped)")
    found = _match_masks(files, Path(masks), names.manual) if masks is not None else {}
    image_names = {f.name for f in files}
    for name in holdout:
        if name not in image_names:
            raise UserError(
                f"--holdout {name}: no such image; image names: {', '.join(sorted(image_names))}"
            )
        if name not in found:
            raise UserError(f"--holdout {name}: a held-out image needs a mask in --masks")
    if set(holdout) >= image_names:
        raise UserError("every image is held out; leave at least one image to annotate")
    mask_arrays = {}
    for f in files:
        if f.name in found:
            shape = read_image(f.path, config.data.channel).shape
            for path in found[f.name]:
                if (mask_shape := read_mask(path).shape) != shape:
                    raise UserError(
                        f"mask {path} is {mask_shape[1]}x{mask_shape[0]} but image {f.path} is "
                        f"{shape[1]}x{shape[0]}"
                    )
            mask_arrays[f.name] = combine_masks([read_mask(p) for p in found[f.name]], f.name)
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root} exists and is not empty; choose a new project folder")
    unknown = [f.name for f in files if f.pixel_size is None]
    if unknown and config.data.pixel_size is not None:
        warnings.warn(
            f"no pixel size for {len(unknown)} image(s) (e.g. {unknown[0]}): used at their "
            f"native size, not resampled to {config.data.pixel_size} µm; give --pixel-size",
            stacklevel=2,
        )
    normalizer = dict(PER_IMAGE)
    root.mkdir(parents=True, exist_ok=True)
    lock = acquire_lock(root / "project.lock")
    try:
        entries, annotations = [], []
        for f in progress_bar(files, desc="copying images", leave=False, enabled=len(files) >= 5):
            entry = _copy_image(root, f, f.name in holdout, config, normalizer)
            entries.append(entry)
            if f.name in mask_arrays:
                classes = config.data.num_classes
                stored = store_annotation(root, f.name, mask_arrays[f.name], classes)
                h, w = mask_arrays[f.name].shape
                annotations.append(Annotation(f.name, Region(f.name, 0, 0, h, w), stored, "init"))
        settings = {
            "schema": PROJECT_SCHEMA,
            "images": [dataclasses.asdict(e) for e in entries],
            "mask_suffix": mask_suffix,
            "strategy": strategy,
            "normalizer": normalizer,
        }
        atomic_write_text(root / "config.yaml", save_yaml(config))
        atomic_write_text(root / "state.json", state_to_json(State(tuple(annotations))))
        atomic_write_text(root / "project.json", json.dumps(settings, indent=1))
        (root / TO_ANNOTATE).mkdir(exist_ok=True)
        record_environment(root, describe(resolve(config.train.device, config.train.precision)))
    finally:
        lock.release()
    project = Project(root)
    if payload is not None and model is not None:
        start = project.adopt(payload, Path(model).name)
        dice = "" if start.val_dice is None else f", held-out Dice {start.val_dice:.3f}"
        log(f"round 0: the model {Path(model).name}{dice}")
    log(
        f"project {root}: {len(files)} images ({len(holdout)} held out), "
        f"{len(annotations)} with masks"
    )
    return project


MODEL_SETTINGS = (
    "model.depth",
    "model.base_filters",
    "model.dropout",
    "data.pixel_size",
    "data.patch_size",
    "data.spatial_dims",
    "data.num_classes",
    "data.labels",
    "data.label_suffix",
)
"""The settings a model file fixes for a project started from it."""


def adopted_config(base: Config, model: Config, overrides: dict[str, Any], where: Path) -> Config:
    """The config of a project started from a model: ``base`` (the preset) with the
    network, pixel size, window and classes of the ``model``'s config
    (:data:`MODEL_SETTINGS`), ``train.init=warm`` (later rounds fine-tune the model) unless
    ``overrides`` say otherwise, then ``overrides``.

    Raises:
        UserError: ``overrides`` change a setting the model fixes.
    """
    if fixed := sorted(set(overrides) & set(MODEL_SETTINGS)):
        raise UserError(
            f"{', '.join(fixed)}: the model {where} fixes these settings; leave them out"
        )
    flat = to_dict(model)
    adopted = {key: flat[key.split(".")[0]][key.split(".")[1]] for key in MODEL_SETTINGS}
    return with_overrides(base, {**adopted, "train.init": "warm", **overrides})


def _copy_image(
    root: Path, f: ImageFile, holdout: bool, config: Config, normalizer: dict[str, Any]
) -> ProjectImage:
    """Copy ``f`` into ``root/images/`` and give it its normaliser, its own statistics at
    the model's pixel size."""
    name = f"images/{f.name}{split_name(f.path)[1]}"
    atomic_write_bytes(root / name, f.path.read_bytes())
    d = config.data
    norm = image_normalizer(read_image(f.path, d.channel), f.pixel_size, d.pixel_size)
    return ProjectImage(f.name, name, f.pixel_size, norm.mean, norm.std, holdout)


def _match_masks(
    files: Sequence[ImageFile], folder: Path, suffixes: tuple[str, ...]
) -> dict[str, list[Path]]:
    """Image name -> its mask files, one per class: ``<name><suffix>.<ext>`` anywhere under
    ``folder`` (one binary mask: also another known mask suffix, or the bare name).

    Raises:
        UserError: no mask at all, or an image with the masks of only some classes.
    """
    if not folder.is_dir():
        raise UserError(f"mask folder {folder} not found")
    by_stem: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(image_stem(path), path)
    found = {}
    for f in files:
        if len(suffixes) == 1:
            candidates = (
                f"{f.name}{suffixes[0]}",
                *(f"{f.name}{s}" for s in MASK_SUFFIXES),
                f.name,
            )
            match = next((c for c in candidates if c in by_stem and by_stem[c] != f.path), None)
            if match is not None:
                found[f.name] = [by_stem[match]]
            continue
        paths = [by_stem.get(f"{f.name}{s}") for s in suffixes]
        if all(p is not None for p in paths):
            found[f.name] = [p for p in paths if p is not None]
        elif any(paths):
            missing = [f"{f.name}{s}" for s, p in zip(suffixes, paths, strict=True) if p is None]
            raise UserError(
                f"{folder}: image {f.name} has masks of some classes but not {', '.join(missing)}"
                "; give one mask per class (data.labels) or none"
            )
    if not found:
        raise UserError(
            f"no mask in {folder} matches an image: expected e.g. "
            f"{' + '.join(files[0].name + s + '.png' for s in suffixes)} next to the image names"
        )
    return found
