"""Configuration: frozen dataclasses, YAML in/out and dotted overrides.

Every setting has one home here, with the choices it accepts (:data:`LOSSES`, ...); the
checks of a whole config are :func:`activeseg.validation.validate`. The CLI only fills these
fields. Presets (:mod:`activeseg.presets`) are dicts of overrides applied to the defaults, so
``activeseg simulate --preset cpu --set train.epochs=50`` and a saved ``config.yaml``
describe a run completely.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from activeseg.errors import UserError

SCHEMA_VERSION = 1

# The choices of the settings that name a method (checked by activeseg.validation).
LOSSES = ("auto", "dice", "dice_ce", "wbce", "dice_then_wbce")  # train.loss
SCHEDULES = ("keras", "cosine", "poly")  # train.schedule
INITS = ("scratch", "warm")  # train.init: how each iteration's model starts
PRECISIONS = ("auto", "fp32", "bf16")  # train.precision
EDT_MODES = ("border", "foreground")  # scoring.edt
POOL_POLICIES = ("remove", "keep")  # loop.pool_policy
SELECTIONS = ("top_k", "stochastic")  # loop.selection
COMMITTEE_KINDS = ("ensemble", "svgd")  # the committees of <strategy>@<committee>


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they become patches.

    ``n_initial / n_val / n_test / n_pool`` count patches; validation and test patches come from
    source images that contribute nothing else (split by source image, fixed by ``split_seed``
    for every strategy and repetition). ``n_pool = None`` puts every remaining patch in the pool.
    """

    source: str = "synthetic"  # a BIDS or images/+masks/ folder, or "synthetic"
    modality: str = "SEM"  # BIDS image suffix, e.g. SEM, TEM, BF
    label_suffix: str = "seg-myelin-manual"  # BIDS derivative label suffix (binary masks)
    # 2D classes by name: class i+1 is the mask <stem>_seg-<labels[i]>-manual (AxonDeepSeg:
    # axon,myelin -> 0 background, 1 axon, 2 myelin); empty: one binary mask (label_suffix).
    labels: tuple[str, ...] = ()
    source_pixel_size: float | None = None  # µm; else BIDS sidecars, else the files' metadata
    channel: int | None = None  # the channel (0-based) of multi-channel images to segment
    pixel_size: float | None = None  # target µm after resampling; None = keep native
    patch_size: int = 512  # pixels (after resampling)
    n_initial: int = 5
    n_val: int = 10
    n_test: int = 10
    n_pool: int | None = 26
    split_seed: int = 0
    # Volumes (MSD / NIfTI folders, or "synthetic" with spatial_dims 3); see data/volumes.py.
    spatial_dims: int = 2  # 2 = microscopy images, 3 = volumes (and a 3D U-Net)
    num_classes: int = 2  # labels 0 .. num_classes-1 (0 = background); 2 = binary (sigmoid);
    # setting data.labels sets it to len(labels) + 1
    spacing: float | None = None  # volumes: target isotropic voxel size in mm; None = native
    clip: tuple[float, float] | None = None  # volumes: intensity window, then scaled to [0, 1]
    clip_percentile: bool = False  # volumes: ``clip`` holds per-volume percentiles
    whole_volume: bool = True  # volumes: pad/crop each to patch_size^3; false = tile cubes

    @property
    def class_names(self) -> tuple[str, ...]:
        """The names of the foreground classes 1 .. C-1: ``labels``, else the label of
        ``label_suffix`` (``seg-myelin-manual`` -> ``myelin``) for binary masks, else
        ``class1``, ``class2``, ... (volumes)."""
        if self.labels:
            return self.labels
        if self.num_classes == 2:
            parts = self.label_suffix.split("-")
            return (parts[1] if len(parts) >= 2 and parts[0] == "seg" else "foreground",)
        return tuple(f"class{k}" for k in range(1, self.num_classes))

    @property
    def mask_suffixes(self) -> tuple[str, ...]:
        """The file-name suffixes of a 2D image's masks, one per foreground class (binary:
        ``_<label_suffix>``; with ``labels``: ``_seg-<label>-manual`` each)."""
        if self.labels:
            return tuple(f"_seg-{name}-manual" for name in self.labels)
        return (f"_{self.label_suffix}",)


@dataclass(frozen=True)
class ModelConfig:
    """The paper's U-Net: ``depth`` levels of ``base_filters * 2**i`` filters."""

    depth: int = 5
    base_filters: int = 32
    dropout: float = 0.2


@dataclass(frozen=True)
class TrainConfig:
    """Adam on ``steps_for(N)`` steps for N labelled patches, with a learning-rate schedule.

    Length: ``epochs x steps_per_epoch`` steps (the paper: 3500 x 2 whatever N); with
    ``steps_per_epoch = None`` an epoch is one pass over the labelled set, ``ceil(N /
    batch_size)`` steps, so training follows the labelled-set size. The result is clamped to
    ``[min_steps, max_steps]``.

    ``schedule``: ``keras`` (the paper: time decay ``lr / (1 + decay * step)``, ``decay = lr /
    epochs``), ``cosine`` (from ``lr`` down to ``lr / 100`` at the last step) or ``poly``
    (nnU-Net's ``lr * (1 - step / steps) ** 0.9``); the first ``warmup_steps`` steps ramp
    linearly up to ``lr``.

    ``loss``: ``dice``; ``dice_ce`` (Dice + cross-entropy, MONAI's ``DiceCELoss``); ``wbce``
    (BCE weighted ``fg_weight`` on foreground, ``1 - fg_weight`` on background; paper 0.3 /
    0.7); ``dice_then_wbce`` (first half of the steps Dice, then wBCE: the paper's
    "successively"); ``auto``: ``dice`` for one foreground class (the paper), ``dice_ce`` for
    several (Dice alone lets a class collapse). The weights of the best validation Dice
    (checked every ``validate_every`` steps and at the end) are kept. ``patience``: stop after
    this many validations without a better Dice (0: never stop early).

    ``init``: ``scratch`` trains every iteration from a fresh initialisation (the paper);
    ``warm`` fine-tunes the previous iteration's model of the same strategy and repetition with
    its own shorter schedule (:meth:`warm`: the fraction ``warm_epochs / epochs`` of a fresh
    training's steps for every N, at ``warm_lr``, same schedule), stopping early after
    ``warm_patience`` validations without a better Dice. Iteration 0 and the whole-pool model
    always start from scratch.
    """

    loss: str = "auto"
    fg_weight: float = 0.3
    lr: float = 1e-2
    schedule: str = "keras"
    warmup_steps: int = 0
    epochs: int = 3500
    steps_per_epoch: int | None = 2  # None: one pass over the labelled set, ceil(N / batch)
    min_steps: int = 1
    max_steps: int | None = None
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

    def steps_for(self, n: int) -> int:
        """Training steps for ``n`` labelled patches (see the class docstring)."""
        per_epoch = self.steps_per_epoch
        if per_epoch is None:
            per_epoch = max(1, math.ceil(n / self.batch_size))
        steps = max(self.epochs * per_epoch, self.min_steps)
        return steps if self.max_steps is None else min(steps, self.max_steps)

    def describe_steps(self) -> str:
        """The length rule in words, e.g. for the report."""
        if self.steps_per_epoch is not None:
            rule = f"{self.epochs * self.steps_per_epoch}"
        else:
            rule = f"{self.epochs} x ceil(N / {self.batch_size})"
        if self.min_steps > 1 or self.max_steps is not None:
            rule += f" clamped to [{self.min_steps}, {self.max_steps or 'inf'}]"
        text = f"{rule} training steps per model ({self.schedule} schedule, lr {self.lr:g})"
        if self.init == "warm":
            text += f"; warm iterations fine-tune {self.warm_epochs}/{self.epochs} of that"
            text += f" at lr {self.warm_lr:g}"
        return text

    def warm(self) -> TrainConfig:
        """The fine-tuning schedule of ``init=warm`` as a plain schedule.

        For every N its length is the fraction ``warm_epochs / epochs`` of a fresh training,
        rounded up: ``min_steps`` and ``max_steps`` scale with the epochs (unscaled, a 150-step
        minimum made fine-tuning as long as a fresh training on small labelled sets).
        """

        def scaled(steps: int) -> int:  # ceil(steps * warm_epochs / epochs) >= 1, in integers
            return -(-steps * self.warm_epochs // self.epochs)

        return replace(
            self,
            epochs=self.warm_epochs,
            lr=self.warm_lr,
            patience=self.warm_patience,
            min_steps=scaled(self.min_steps),
            max_steps=None if self.max_steps is None else scaled(self.max_steps),
        )


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
    mc_batch: int = 10  # fastest with native bf16 (docs/performance.md); 5 was, on AVX2
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


def with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """``config`` with dotted fields replaced, e.g. ``{"train.epochs": 10}``; values are
    converted to the field's type (strings from the command line included).

    One setting follows another: ``data.labels`` (2D) sets ``data.num_classes`` to
    ``len(labels) + 1`` unless the same overrides give ``data.num_classes``."""
    if overrides.get("data.labels") and "data.num_classes" not in overrides:
        labels = _convert(overrides["data.labels"], tuple[str, ...], "data.labels")
        overrides = {**overrides, "data.num_classes": len(labels) + 1}
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
