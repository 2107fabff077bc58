"""Configuration: frozen dataclasses, presets as data, YAML in/out and dotted overrides.

Every setting has one home here; the CLI only fills these fields. A preset is a dict of
overrides applied to the defaults, so ``activeseg simulate --preset cpu --set train.steps=50``
and a saved ``config.yaml`` describe a run completely.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from activeseg.errors import UserError

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they become patches.

    ``n_initial / n_val / n_test / n_pool`` count patches; validation and test patches come from
    source images that contribute nothing else (split by source image, fixed by ``split_seed``
    for every strategy and repetition). ``n_pool = None`` puts every remaining patch in the pool.
    """

    source: str = "synthetic"  # a BIDS or images/+masks/ folder, or "synthetic"
    modality: str = "SEM"  # BIDS image suffix, e.g. SEM, TEM, BF
    label_suffix: str = "seg-myelin-manual"  # BIDS derivative label suffix
    source_pixel_size: float | None = None  # µm; for plain folders (BIDS: JSON sidecars)
    pixel_size: float | None = None  # target µm after resampling; None = keep native
    patch_size: int = 512  # pixels (after resampling)
    n_initial: int = 5
    n_val: int = 10
    n_test: int = 10
    n_pool: int | None = 26
    split_seed: int = 0
    # Volumes (MSD / NIfTI folders, or "synthetic" with spatial_dims 3); see data/volumes.py.
    spatial_dims: int = 2  # 2 = microscopy images, 3 = volumes (and a 3D U-Net)
    num_classes: int = 2  # labels 0 .. num_classes-1 (0 = background); 2 = binary (sigmoid)
    spacing: float | None = None  # volumes: target isotropic voxel size in mm; None = native
    clip: tuple[float, float] | None = None  # volumes: intensity window, then scaled to [0, 1]
    clip_percentile: bool = False  # volumes: ``clip`` holds per-volume percentiles
    whole_volume: bool = True  # volumes: pad/crop each to patch_size^3; false = tile cubes


@dataclass(frozen=True)
class ModelConfig:
    """The paper's U-Net: ``depth`` levels of ``base_filters * 2**i`` filters."""

    depth: int = 5
    base_filters: int = 32
    dropout: float = 0.2


@dataclass(frozen=True)
class TrainConfig:
    """Adam with Keras-style time decay ``lr / (1 + decay * step)``, ``decay = lr / epochs``.

    ``loss``: ``dice``; ``wbce`` (BCE weighted ``fg_weight`` on myelin, ``1 - fg_weight`` on
    background; paper 0.3 / 0.7); ``dice_then_wbce`` (first half of the epochs Dice, then wBCE:
    the paper's "successively"). The weights of the best validation Dice (checked every
    ``validate_every`` steps and at the end) are kept. ``patience``: stop after this many
    validations without a better Dice (0: never stop early).

    ``init``: ``scratch`` trains every iteration from a fresh initialisation (the paper);
    ``warm`` fine-tunes the previous iteration's model of the same strategy and repetition with
    its own shorter schedule ``warm_epochs`` x ``steps_per_epoch`` steps at ``warm_lr``
    (same time decay), stopping early after ``warm_patience`` validations without a better
    Dice. Iteration 0 and the whole-pool model always start from scratch.
    """

    loss: str = "dice"
    fg_weight: float = 0.3
    lr: float = 1e-2
    epochs: int = 3500
    steps_per_epoch: int = 2
    batch_size: int = 5
    augment: bool = True
    validate_every: int = 50
    patience: int = 0
    init: str = "scratch"  # scratch | warm
    warm_epochs: int = 500
    warm_lr: float = 1e-3
    warm_patience: int = 3
    precision: str = "auto"  # fp32 | bf16 | auto (bf16 only where the hardware has it)
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def warm(self) -> TrainConfig:
        """The fine-tuning schedule of ``init=warm`` as a plain schedule."""
        return replace(self, epochs=self.warm_epochs, lr=self.warm_lr, patience=self.warm_patience)


@dataclass(frozen=True)
class ScoringConfig:
    """Monte-Carlo dropout: ``mc_samples`` stochastic passes, ``mc_batch`` per forward pass.

    ``edt``: the distance weighting of ``std_edt`` — ``border`` (distance of each pixel to the
    nearest border of the thresholded mean prediction, on both sides) or ``foreground``
    (the paper text: distance inside the predicted myelin, zero elsewhere).
    ``test_uncertainty``: also run MC dropout on the test patches at every evaluation and
    record how well the std map finds wrong pixels (AUROC) and the calibration (ECE).
    """

    mc_samples: int = 50
    mc_batch: int = 10  # fastest with native bf16 (README Performance); 5 was, in fp32 on AVX2
    threshold: float = 0.5
    edt: str = "border"
    test_uncertainty: bool = True
    cover_candidates: int = 16  # max_cover: the K most uncertain patches it covers from


@dataclass(frozen=True)
class CommitteeConfig:
    """Committees of the strategies ``ensemble``, ``svgd``, ``svgd_mi`` and
    ``<strategy>@<committee>``: ``members`` U-Nets (Nath et al.: 5). ``ensemble`` trains them
    independently (as ``train``), ``svgd`` jointly by Stein variational gradient descent
    with the Dice log-likelihood ``-log(DiceLoss + svgd_epsilon)``; ``svgd_repulsion = false``
    replaces the kernel by the identity (independent particles; an ablation).
    """

    members: int = 5
    svgd_epsilon: float = 1e-3
    svgd_repulsion: bool = True


@dataclass(frozen=True)
class LoopConfig:
    """The active-learning protocol: strategies x repetitions x iterations, k per query.

    ``upper_bound``: once per repetition, also train on the whole pool (initial + pool
    patches) — the reference "all labelled" model of the report's verdict.
    ``pool_policy``: ``remove`` labelled patches from the pool, or ``keep`` them (a re-chosen
    patch is trained on again at no annotation cost). ``selection``: ``top_k`` or
    ``stochastic`` batches (best of ``stochastic_groups`` random groups of k by mean score).
    """

    strategies: tuple[str, ...] = ("random", "std_edt")
    repetitions: int = 10
    iterations: int = 15
    query_size: int = 1
    seed: int = 0
    save_maps: bool = True
    upper_bound: bool = True
    pool_policy: str = "remove"
    selection: str = "top_k"
    stochastic_groups: int = 100


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    committee: CommitteeConfig = field(default_factory=CommitteeConfig)


# Presets: overrides of the defaults (which are the paper's SBEM values).
PRESETS: dict[str, dict[str, Any]] = {
    # Table II (SBEM): 512x512 patches, batch 5, 3500 epochs x 2 steps, split 5/10/10/26.
    "paper-sbem": {"loop.repetitions": 10},
    # Table III (TEM): 800 epochs, split 2/2/20/72, 3 repetitions.
    "paper-tem": {
        "data.modality": "TEM",
        "data.n_initial": 2,
        "data.n_val": 2,
        "data.n_test": 20,
        "data.n_pool": 72,
        "train.epochs": 800,
        "loop.repetitions": 3,
    },
    # Reduced for a 2-core CPU; measured in README ("Presets").
    "cpu": {
        "data.pixel_size": 0.2,
        "data.patch_size": 128,
        "data.n_initial": 5,
        "data.n_val": 10,
        "data.n_test": 20,
        "data.n_pool": 40,
        "model.depth": 4,
        "model.base_filters": 8,
        "train.epochs": 50,
        "train.steps_per_epoch": 2,
        "train.batch_size": 8,
        "train.validate_every": 10,
        "train.warm_epochs": 15,
        "train.warm_patience": 1,
        "scoring.mc_samples": 20,
        "loop.repetitions": 3,
    },
    # Nath et al., "Diminishing uncertainty within the training pool" (MSD Task04): whole
    # 64^3 volumes, intensities clipped to [0, 2048], anterior/posterior labels, lr 1e-3,
    # batch 8, 1,500 steps, no augmentation, 40 iterations x 1 query. The paper's split is
    # 10 initial / 153 pool / 50 val / 50 test of 263 volumes; the 260 listed MSD training
    # pairs leave 150 for the pool (n_pool = all).
    "nath-hippocampus": {
        "data.spatial_dims": 3,
        "data.num_classes": 3,
        "data.patch_size": 64,
        "data.whole_volume": True,
        "data.clip": (0.0, 2048.0),
        "data.n_initial": 10,
        "data.n_pool": None,
        "data.n_val": 50,
        "data.n_test": 50,
        "model.depth": 4,
        "model.base_filters": 16,
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
    # Hippocampus on a 2-core CPU: measured in README ("3D volumes").
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
        "train.batch_size": 4,
        "train.epochs": 60,
        "train.steps_per_epoch": 1,
        "train.augment": False,
        "train.validate_every": 20,
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


def with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """``config`` with dotted fields replaced, e.g. ``{"train.epochs": 10}``; values are
    converted to the field's type (strings from the command line included)."""
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        sub = getattr(config, section, None) if name else None
        names = {f.name: f for f in fields(sub)} if is_dataclass(sub) else {}
        if name not in names:
            raise UserError(f"unknown setting {key!r}; valid settings: {', '.join(all_keys())}")
        typed = _convert(value, _field_type(type(sub), name), key)
        updated: Any = replace(sub, **{name: typed})  # type: ignore[type-var]
        config = replace(config, **{section: updated})
    return config


def parse_assignments(items: list[str]) -> dict[str, str]:
    """``["train.epochs=10", ...]`` -> ``{"train.epochs": "10"}``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects key=value (e.g. train.epochs=10), got {item!r}")
        out[key.strip()] = value.strip()
    return out


def all_keys() -> list[str]:
    cfg = Config()
    return [
        f"{section.name}.{f.name}"
        for section in fields(cfg)
        for f in fields(getattr(cfg, section.name))
    ]


def to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) with the schema version."""
    out = dataclasses.asdict(config)
    for values in out.values():
        values.update({k: list(v) for k, v in values.items() if isinstance(v, tuple)})
    return {"schema": SCHEMA_VERSION, **out}


def from_dict(data: dict[str, Any], where: str = "config") -> Config:
    """Inverse of :func:`to_dict`; unknown keys or an unknown schema are a :class:`UserError`."""
    data = dict(data)
    schema = data.pop("schema", None)
    if schema != SCHEMA_VERSION:
        raise UserError(
            f"{where}: config schema {schema!r} is not {SCHEMA_VERSION}; "
            "it was written by another version of activeseg — start a new run directory"
        )
    for section, values in data.items():
        if not isinstance(values, dict):
            raise UserError(f"{where}: section {section!r} must be a mapping of settings")
    flat = {
        f"{section}.{key}": value
        for section, values in data.items()
        for key, value in values.items()
    }
    return with_overrides(Config(), flat)


def save_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def load_yaml(path: Path) -> Config:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a config mapping")
    return from_dict(data, str(path))


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Convert ``value`` (possibly a command-line string) to the type ``hint``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key)
    if value is None:
        raise UserError(f"setting {key} cannot be empty (null)")
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(_convert(v.strip() if isinstance(v, str) else v, args[0], key) for v in items)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError) as exc:
        raise UserError(f"setting {key}: {value!r} is not a valid {hint.__name__}") from exc
    raise TypeError(f"unsupported config type {hint!r} for {key}")
