"""Validation: is a :class:`~activeseg.config.Config` runnable, and if not, which setting and
what fix.

:func:`validate` runs before any work starts and raises a :class:`UserError` naming the
setting; the choices it checks against live with the settings in :mod:`activeseg.config`.
"""

from __future__ import annotations

import math

from activeseg.config import (
    EDT_MODES,
    INITS,
    LOSSES,
    POOL_POLICIES,
    PRECISIONS,
    SCHEDULES,
    SELECTIONS,
    Config,
    DataConfig,
    LoopConfig,
    ScoringConfig,
    TrainConfig,
)
from activeseg.errors import UserError


def validate(config: Config) -> None:
    """Reject inconsistent settings before any work starts: a :class:`UserError` naming the
    setting. (Strategy names are resolved, and checked against the config, by
    :func:`activeseg.acquisition.strategies_of`.)"""
    checks = [
        *_data_checks(config.data),
        *_volume_checks(config),
        *_model_checks(config),
        *_train_checks(config.train),
        *_scoring_checks(config.scoring),
        *_loop_checks(config.loop, config.data),
        (config.committee.members >= 2, "committee.members must be >= 2"),
        (config.committee.svgd_epsilon > 0, "committee.svgd_epsilon must be > 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


Check = tuple[bool, str]


def _positive(value: float | None) -> bool:
    return value is None or (math.isfinite(value) and value > 0)


def _choice(value: str, key: str, choices: tuple[str, ...]) -> Check:
    return value in choices, f"{key} must be one of {', '.join(choices)}, got {value!r}"


def _data_checks(d: DataConfig) -> list[Check]:
    sizes = {
        "data.pixel_size": d.pixel_size,
        "data.source_pixel_size (--pixel-size)": d.source_pixel_size,
    }
    checks = [
        (_positive(value), f"{key} must be a positive number of µm, got {value}; leave it out "
         "if unknown")
        for key, value in sizes.items()
    ]  # fmt: skip
    counts = {"data.n_initial": d.n_initial, "data.n_val": d.n_val, "data.n_test": d.n_test}
    checks += [(n >= 1, f"{key} must be >= 1, got {n}") for key, n in counts.items()]
    checks.append((d.n_pool is None or d.n_pool >= 0, f"data.n_pool must be >= 0, got {d.n_pool}"))
    checks.append(
        (d.channel is None or d.channel >= 0, f"data.channel must be >= 0, got {d.channel}")
    )
    return checks


def _volume_checks(config: Config) -> list[Check]:
    d, train = config.data, config.train
    volumes = d.spatial_dims == 3
    return [
        (d.spatial_dims in (2, 3), f"data.spatial_dims must be 2 or 3, got {d.spatial_dims}"),
        (d.num_classes >= 2, f"data.num_classes must be >= 2, got {d.num_classes}"),
        (
            d.num_classes == 2 or volumes or bool(d.labels),
            "data.num_classes > 2 needs volumes (data.spatial_dims=3) or, for 2D images, the "
            "classes by name: data.labels=axon,myelin",
        ),
        (
            not d.labels or (not volumes and d.num_classes == len(d.labels) + 1),
            f"data.labels {','.join(d.labels)} name {len(d.labels)} foreground classes of 2D "
            f"masks, so data.num_classes must be {len(d.labels) + 1}, got {d.num_classes} "
            "(volumes take their classes from the label files: leave data.labels empty)",
        ),
        (
            not d.labels or d.label_suffix == DataConfig.label_suffix,
            f"data.label_suffix ({d.label_suffix}) is for one binary mask; with data.labels "
            "the masks are <stem>_seg-<label>-manual: leave data.label_suffix out",
        ),
        (
            len(set(d.labels)) == len(d.labels)
            and all(name and name.replace("_", "").isalnum() for name in d.labels),
            f"data.labels must be distinct names of letters and digits, got {d.labels}",
        ),
        (
            not (volumes and train.augment),
            "train.augment is for 2D images; set train.augment=false for volumes",
        ),
        (
            d.num_classes == 2 or train.loss in ("auto", "dice", "dice_ce"),
            f"train.loss={train.loss} is binary only; use train.loss=dice_ce (or dice, auto)",
        ),
        (_positive(d.spacing), f"data.spacing must be a positive number of mm, got {d.spacing}"),
        (
            d.clip is None or d.clip[0] < d.clip[1],
            f"data.clip must be (low, high) with low < high, got {d.clip}",
        ),
    ]


def _model_checks(config: Config) -> list[Check]:
    m, patch = config.model, config.data.patch_size
    return [
        (0.0 <= m.dropout < 1.0, "model.dropout must be in [0, 1)"),
        (m.depth >= 2 and m.base_filters >= 1, "model.depth must be >= 2, base_filters >= 1"),
        (
            patch >= 2 ** (m.depth - 1) and patch % 2 ** (m.depth - 1) == 0,
            f"data.patch_size {patch} must be a multiple of 2**(model.depth-1) = "
            f"{2 ** (m.depth - 1)}",
        ),
    ]


def _train_checks(t: TrainConfig) -> list[Check]:
    return [
        (
            t.epochs >= 1 and (t.steps_per_epoch is None or t.steps_per_epoch >= 1),
            "train.epochs and train.steps_per_epoch must be >= 1 (steps_per_epoch none: one "
            "pass over the labelled set)",
        ),
        (
            t.min_steps >= 1 and (t.max_steps is None or t.max_steps >= t.min_steps),
            f"train.min_steps ({t.min_steps}) must be >= 1 and <= train.max_steps "
            f"({t.max_steps})",
        ),
        (t.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {t.warmup_steps}"),
        _choice(t.schedule, "train.schedule", SCHEDULES),
        (t.batch_size >= 1, "train.batch_size must be >= 1"),
        (t.validate_every >= 1, "train.validate_every must be >= 1"),
        _choice(t.loss, "train.loss", LOSSES),
        _choice(t.init, "train.init", INITS),
        _choice(t.precision, "train.precision", PRECISIONS),
        (t.warm_epochs >= 1, "train.warm_epochs must be >= 1"),
        (_positive(t.lr), f"train.lr must be a positive number, got {t.lr}"),
        (_positive(t.warm_lr), f"train.warm_lr must be a positive number, got {t.warm_lr}"),
        (
            t.patience >= 0 and t.warm_patience >= 0,
            "train.patience and train.warm_patience must be >= 0 (0: no early stopping)",
        ),
        (0.0 < t.fg_weight < 1.0, "train.fg_weight must be in (0, 1)"),
    ]  # fmt: skip


def _scoring_checks(s: ScoringConfig) -> list[Check]:
    return [
        (s.mc_samples >= 2, "scoring.mc_samples must be >= 2"),
        (s.mc_batch >= 1, "scoring.mc_batch must be >= 1"),
        _choice(s.edt, "scoring.edt", EDT_MODES),
        (0.0 < s.threshold < 1.0, "scoring.threshold must be in (0, 1)"),
        (s.cover_candidates >= 1, "scoring.cover_candidates must be >= 1"),
    ]


def _loop_checks(lc: LoopConfig, d: DataConfig) -> list[Check]:
    needed = lc.query_size if lc.pool_policy == "keep" else lc.iterations * lc.query_size
    return [
        (
            len(set(lc.strategies)) == len(lc.strategies) and bool(lc.strategies),
            f"loop.strategies must be distinct and non-empty: {lc.strategies}",
        ),
        (lc.repetitions >= 1, "loop.repetitions must be >= 1"),
        (lc.iterations >= 0, "loop.iterations must be >= 0"),
        (lc.query_size >= 1, "loop.query_size (k) must be >= 1"),
        _choice(lc.pool_policy, "loop.pool_policy", POOL_POLICIES),
        _choice(lc.selection, "loop.selection", SELECTIONS),
        (lc.stochastic_groups >= 1, "loop.stochastic_groups must be >= 1"),
        (
            d.n_pool is None or needed <= d.n_pool,
            f"{lc.iterations} iterations x k={lc.query_size} need {needed} pool patches but "
            f"data.n_pool is {d.n_pool}; lower loop.iterations or raise data.n_pool",
        ),
    ]
