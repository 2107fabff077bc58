"""Presets: named sets of overrides of the defaults (which are the paper's SBEM values).

A preset is data, a dict of dotted settings, so ``activeseg config --preset cpu`` prints
exactly what it changes and a run's ``config.yaml`` records the result.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from activeseg.config import Config, load_yaml, with_overrides
from activeseg.errors import UserError

PRESETS: dict[str, dict[str, Any]] = {
    # Table II (SBEM): 512x512 patches, batch 5, 3500 epochs x 2 steps, split 5/10/10/26,
    # Dice loss, Keras time decay (the defaults, stated here).
    "paper-sbem": {"train.loss": "dice", "train.schedule": "keras", "loop.repetitions": 10},
    # Table III (TEM): 800 epochs, split 2/2/20/72, 3 repetitions.
    "paper-tem": {
        "data.modality": "TEM",
        "train.loss": "dice",
        "train.schedule": "keras",
        "data.n_initial": 2,
        "data.n_val": 2,
        "data.n_test": 20,
        "data.n_pool": 72,
        "train.epochs": 800,
        "loop.repetitions": 3,
    },
    # A 2-core CPU budget; each setting chosen from the learning curves of
    # docs/training-recipe.md: small patches (more, cheaper, varied samples per step), a
    # cosine schedule with warm-up, training that follows the labelled-set size, and
    # validation/test sets large enough that one training's noise stays below the effects.
    "cpu": {
        "data.pixel_size": 0.2,
        "data.patch_size": 64,
        "data.n_initial": 2,
        "data.n_val": 40,
        "data.n_test": 80,
        "data.n_pool": None,
        "model.depth": 4,
        "model.base_filters": 8,
        "train.schedule": "cosine",
        "train.warmup_steps": 10,
        "train.epochs": 40,
        "train.steps_per_epoch": None,
        "train.min_steps": 150,
        "train.max_steps": 1000,
        "train.batch_size": 16,
        "train.validate_every": 25,
        # --init warm: 12/40 of a fresh training, Dice within 0.001 of scratch on the SEM data
        # in under a third of its time (benchmarks/README.md; 15/40 took 0.39 of it).
        "train.warm_epochs": 12,
        "train.warm_patience": 2,
        "scoring.mc_samples": 20,
        "loop.repetitions": 3,
    },
    # Nath et al., "Diminishing uncertainty within the training pool" (MSD Task04): whole
    # 64^3 volumes, anterior/posterior labels, Dice loss, lr 1e-3,
    # batch 8, 1,500 steps, no augmentation, 40 iterations x 1 query. The paper's split is
    # 10 initial / 153 pool / 50 val / 50 test of 263 volumes; the 260 listed MSD training
    # pairs leave 150 for the pool (n_pool = all).
    "nath-hippocampus": {
        "data.spatial_dims": 3,
        "data.num_classes": 3,
        "data.patch_size": 64,
        "data.whole_volume": True,
        # The paper clips to [0, 2048]; MSD's scanner scales differ so much that this window
        # squashed 55 of the 260 volumes into [0, 0.15] and saturated 33 (docs/strategies.md):
        # a per-volume percentile window keeps the paper's intent on every volume.
        "data.clip": (0.0, 99.5),
        "data.clip_percentile": True,
        "data.n_initial": 10,
        "data.n_pool": None,
        "data.n_val": 50,
        "data.n_test": 50,
        "model.depth": 4,
        "model.base_filters": 16,
        "train.loss": "dice",
        "train.lr": 1e-3,
        "train.batch_size": 8,
        "train.epochs": 1500,
        "train.steps_per_epoch": 1,
        "train.augment": False,
        "train.validate_every": 100,
        "scoring.test_uncertainty": False,
        "loop.iterations": 40,
        "loop.query_size": 1,
        "loop.repetitions": 5,
        "loop.save_maps": False,
    },
    # Nath et al. on MSD Task07 pancreas CT: 4 mm isotropic, 48^3 samples, HU clipped to
    # [-87, 199] and scaled to [0, 1], lr 4e-4, 10,000 steps, split 20 / 201 / 30 / 30,
    # five queries per iteration.
    "nath-pancreas": {
        "data.spatial_dims": 3,
        "data.num_classes": 3,
        "data.spacing": 4.0,
        "data.patch_size": 48,
        "data.whole_volume": True,
        "data.clip": (-87.0, 199.0),
        "data.n_initial": 20,
        "data.n_pool": 201,
        "data.n_val": 30,
        "data.n_test": 30,
        "model.depth": 4,
        "model.base_filters": 16,
        "train.loss": "dice",
        "train.lr": 4e-4,
        "train.batch_size": 8,
        "train.epochs": 10000,
        "train.steps_per_epoch": 1,
        "train.augment": False,
        "train.validate_every": 500,
        "scoring.test_uncertainty": False,
        "loop.iterations": 40,
        "loop.query_size": 5,
        "loop.repetitions": 5,
        "loop.save_maps": False,
    },
    # Hippocampus on a 2-core CPU (docs/training-recipe.md): Dice + cross-entropy (the
    # default for several classes), cosine schedule, training that follows the labelled set.
    "cpu-3d": {
        "data.spatial_dims": 3,
        "data.num_classes": 3,
        "data.spacing": 2.0,
        "data.patch_size": 24,
        "data.whole_volume": True,
        "data.clip": (0.5, 99.5),
        "data.clip_percentile": True,
        "data.n_initial": 5,
        "data.n_pool": 60,
        "data.n_val": 8,
        "data.n_test": 30,
        "model.depth": 3,
        "model.base_filters": 8,
        "model.dropout": 0.2,
        "train.lr": 5e-3,
        "train.schedule": "cosine",
        "train.warmup_steps": 20,
        "train.batch_size": 4,
        "train.epochs": 60,
        "train.steps_per_epoch": None,
        "train.min_steps": 200,
        "train.max_steps": 1000,
        "train.augment": False,
        "train.validate_every": 25,
        "train.warm_epochs": 18,  # --init warm: the cpu preset's 0.3 of a fresh training
        "scoring.mc_samples": 6,
        "scoring.mc_batch": 6,
        "scoring.test_uncertainty": False,
        "loop.iterations": 10,
        "loop.query_size": 1,
        "loop.repetitions": 3,
        "loop.save_maps": False,
    },
    # A few minutes on 2 cores: the demo and the end-to-end tests.
    "demo": {
        "data.pixel_size": None,
        "data.patch_size": 64,
        "data.n_initial": 3,
        "data.n_val": 6,
        "data.n_test": 12,
        "data.n_pool": 30,
        "model.depth": 3,
        "model.base_filters": 8,
        "train.epochs": 40,
        "train.batch_size": 8,
        "train.validate_every": 10,
        "train.warm_epochs": 10,
        "scoring.mc_samples": 10,
        "loop.repetitions": 2,
        "loop.iterations": 5,
    },
}


def preset(name: str) -> Config:
    """The config of a named preset."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return with_overrides(Config(), PRESETS[name])


def add_base_options(parser: argparse.ArgumentParser) -> None:
    """``--preset NAME`` or ``--config FILE``: where a command's settings start from."""
    base = parser.add_mutually_exclusive_group()
    base.add_argument("--preset", help=f"one of {', '.join(PRESETS)} (default cpu)")
    base.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="start from this config.yaml (e.g. a run's own, to run it again) instead of a preset",
    )


def base_config(preset_name: str | None, config_file: Path | None) -> Config:
    """The config ``config_file`` holds (a run's or project's ``config.yaml``), else the
    preset ``preset_name`` (default ``cpu``)."""
    if config_file is not None:
        if not config_file.is_file():
            raise UserError(f"--config {config_file}: no such file; give a config.yaml")
        return load_yaml(config_file)
    return preset(preset_name or "cpu")
