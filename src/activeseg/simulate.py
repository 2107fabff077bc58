"""The paper's simulation: strategies x repetitions of the active-learning loop on labelled
data, with the ground truth as oracle, written to a run directory (resumable).

This module wires the concrete pieces (data, U-Net learner, simulated oracle, run directory)
into :func:`activeseg.loop.run`.
"""

from __future__ import annotations

import copy
import functools
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from activeseg import loop
from activeseg.acquisition import (
    COMMITTEE_KINDS,
    EDT_MODES,
    Strategy,
    get_selection,
    get_strategy,
)
from activeseg.committee import (
    SvgdResult,
    committee_dice,
    committee_statistics,
    disagreement,
    fit_svgd,
    member_probabilities,
)
from activeseg.config import Config, DataConfig, to_dict
from activeseg.data.patches import Normalizer, PatchSet, Split, resample, split_by_source, tile
from activeseg.data.sources import load_source
from activeseg.data.volumes import load_volumes, prepare_volume, volume_patches
from activeseg.errors import TrainingDiverged, UserError
from activeseg.grid import Execution, make_executor
from activeseg.metrics import (
    confusion,
    per_item_dice,
    summarize,
    summarize_classes,
    uncertainty_quality,
)
from activeseg.model import UNet, output_channels, seeded_unet
from activeseg.rundir import MapsWriter, RunDirectory, disk_usage, remove_temporaries
from activeseg.runtime import Runtime, derive_seed, resolve, torch_generator
from activeseg.scoring import McStats, mc_statistics
from activeseg.train import INITS, LOSSES, FitResult, class_confusion_counts, fit


@dataclass(frozen=True)
class Prepared:
    """Patches ready for training: ``images`` normalised float32 ``[N, 1, P, P]`` (statistics
    of the training-source patches only), ``masks`` uint8 ``[N, 1, P, P]``."""

    patches: PatchSet
    split: Split
    normalizer: Normalizer
    images: torch.Tensor
    masks: np.ndarray


def prepare(cfg: DataConfig) -> Prepared:
    """Load, resample, tile (or fit volumes to one shape), split by source and normalise."""
    patches = _volume_patches(cfg) if cfg.spatial_dims == 3 else _image_patches(cfg)
    split = split_by_source(
        patches, cfg.n_initial, cfg.n_val, cfg.n_test, cfg.n_pool, seed=cfg.split_seed
    )
    normalizer = Normalizer.fit(patches.images[split.train])
    images = torch.from_numpy(normalizer(patches.images))
    return Prepared(patches, split, normalizer, images, patches.masks)


def _volume_patches(cfg: DataConfig) -> PatchSet:
    """Volumes windowed, resampled to ``cfg.spacing`` and cut into ``patch_size``-cubes."""
    volumes = [
        prepare_volume(v, cfg.spacing, cfg.clip, cfg.clip_percentile)
        for v in load_volumes(cfg.source, cfg.num_classes, seed=cfg.split_seed)
    ]
    return volume_patches(volumes, cfg.patch_size, cfg.whole_volume)


def _image_patches(cfg: DataConfig) -> PatchSet:
    """2D images resampled to ``cfg.pixel_size`` and tiled into ``patch_size`` patches."""
    samples = load_source(
        cfg.source,
        pixel_size=cfg.source_pixel_size,
        modality=cfg.modality,
        label_suffix=cfg.label_suffix,
        seed=cfg.split_seed,
    )
    unknown = [s.name for s in samples if s.pixel_size is None]
    if cfg.pixel_size is not None and unknown:
        warnings.warn(
            f"no pixel size for {len(unknown)} image(s) (e.g. {unknown[0]}): they are not "
            f"resampled to data.pixel_size={cfg.pixel_size} µm; give --pixel-size (µm per pixel "
            "of the folder's images) or --set data.pixel_size=none",
            stacklevel=2,
        )
    return tile([resample(s, cfg.pixel_size) for s in samples], cfg.patch_size)


class Scorer(Protocol):
    """Scores patches elsewhere (e.g. :class:`activeseg.shards.ShardedScorer`): receives
    each trained model once, then MC statistics of any patch ids of the prepared images."""

    def set_model(self, model: UNet) -> None: ...

    def statistics(self, ids: Any, samples: int, batch: int, seed: int) -> McStats: ...


class UNetLearner:
    """The :class:`activeseg.loop.Learner` of the simulation: a U-Net trained from scratch
    on the labelled patches, evaluated on the fixed test split, scored by MC dropout (in
    this process, or by ``scorer`` with the same result).

    With ``scoring.test_uncertainty`` the evaluation also runs MC dropout on the test patches
    (seeded from the training seed) and records ``test_uncertainty_auroc``, ``test_ece`` and
    ``test_reliability`` (see :func:`activeseg.metrics.uncertainty_quality`).

    With ``train.init=warm``, :meth:`fit` fine-tunes the weights given to :meth:`start` (or
    those of the previous :meth:`fit`) on the warm schedule; without such weights it starts
    from scratch.
    """

    def __init__(
        self,
        data: Prepared,
        config: Config,
        runtime: Runtime,
        progress: bool,
        scorer: Scorer | None = None,
    ) -> None:
        self.data = data
        self.config = config
        self.runtime = runtime
        self.progress = progress
        self.scorer = scorer
        self.model: UNet | None = None
        self._seed = 0  # the seed of the latest fit()
        self.warm_from: dict[str, torch.Tensor] | None = None  # weights the next fit() tunes
        self.started_from: dict[str, torch.Tensor] | None = None  # those the latest fit() tuned
        val = data.split.val
        self._val = (data.images[val], torch.from_numpy(data.masks[val]).float())
        test = data.split.test
        self._test = (data.images[test], torch.from_numpy(data.masks[test]))

    def new_model(self, seed: int) -> UNet:
        """A freshly initialised U-Net; initialisation draws from ``seed`` only (the global
        RNG state is restored afterwards)."""
        m = self.config.model
        d = self.config.data
        channels = output_channels(d.num_classes)
        return seeded_unet(seed, m.depth, m.base_filters, m.dropout, channels, d.spatial_dims)

    def start(self, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Begin a new sequence of fits (a strategy and repetition): with ``train.init=warm``
        the next :meth:`fit` tunes ``weights``, or starts from scratch if ``None``."""
        self.warm_from = weights

    def fit(self, ids: np.ndarray, masks: np.ndarray, seed: int) -> dict[str, Any]:
        self._seed = seed
        cfg = self.config.train
        self.model = self.new_model(derive_seed(seed, "init"))
        warm = cfg.init == "warm" and self.warm_from is not None
        self.started_from = self.warm_from if warm else None
        if self.started_from is not None:
            self.model.load_state_dict(self.started_from)
        result = fit(
            self.model,
            self.data.images[ids],
            torch.from_numpy(masks).float(),
            *self._val,
            cfg.warm() if warm else cfg,
            self.runtime,
            torch_generator(seed, self.runtime.device),
            self.progress,
        )
        if cfg.init == "warm":
            self.warm_from = copy.deepcopy(self.model.state_dict())
        if self.scorer is not None:
            self.scorer.set_model(self.model)
        return {"init": "warm" if warm else "scratch", **_fit_info(result)}

    def trained_model(self) -> UNet:
        if self.model is None:
            raise RuntimeError("fit() must run before evaluate() or statistics()")
        return self.model

    def checkpoint(self) -> dict[str, Any]:
        """The trained weights for the iteration's checkpoint."""
        return {"model": self.trained_model().state_dict()}

    def test_counts(self) -> tuple[torch.Tensor, dict[str, Any]]:
        """Per-patch, per-foreground-class confusion counts ``[N, K, 4]`` on the test set, and
        extra metrics."""
        images, masks = self._test
        threshold = self.config.scoring.threshold
        model = self.trained_model()
        counts = class_confusion_counts(model, images, masks, self.runtime, threshold)
        return counts, {}

    def evaluate(self) -> dict[str, Any]:
        masks = self._test[1]
        threshold = self.config.scoring.threshold
        counts, extra = self.test_counts()
        out: dict[str, Any] = {f"test_{k}": v for k, v in summarize_classes(counts).items()}
        out |= extra
        out["test_dice_per_patch"] = per_item_dice(counts)
        if self.config.scoring.test_uncertainty:
            stats = self.statistics(self.data.split.test, derive_seed(self._seed, "test_mc"))
            quality = uncertainty_quality(stats.mean, stats.std, masks, threshold)
            out.update({f"test_{k}": v for k, v in quality.items()})
        return out

    def statistics(self, ids: np.ndarray, seed: int) -> McStats:
        s = self.config.scoring
        if self.scorer is not None:
            return self.scorer.statistics(ids, s.mc_samples, s.mc_batch, seed)
        return mc_statistics(
            self.trained_model(),
            self.data.images[ids],
            ids.tolist(),
            s.mc_samples,
            s.mc_batch,
            seed,
            self.runtime,
            self.progress,
        )

    def features(self, ids: np.ndarray, batch: int = 16) -> np.ndarray:
        """Bottleneck descriptors ``[k, F]`` (float64) of patches ``ids``, evaluation mode."""
        model = self.trained_model()
        self.runtime.place(model)
        model.eval()
        parts = []
        for start in range(0, len(ids), batch):
            x = self.runtime.tensor(self.data.images[ids[start : start + batch]])
            with self.runtime.autocast():
                parts.append(model.features(x).double().cpu())
        return torch.cat(parts).numpy() if parts else np.empty((0, 0))


class CommitteeLearner(UNetLearner):
    """A committee of ``committee.members`` U-Nets (:mod:`activeseg.committee`): ``kind``
    ``ensemble`` (independent trainings with seeds ``(seed, "member", m)``) or ``svgd``
    (particles initialised like the ensemble's members, trained jointly by SVGD). Evaluation
    thresholds the committee-mean probability and also records each member's test Dice
    (``test_member_dice``) and the fraction of test pixels where the members' thresholded
    predictions differ (``test_member_disagreement``); statistics are over the members.
    Committees always train from scratch (``train.init = warm`` applies to single U-Nets)."""

    def __init__(
        self, data: Prepared, config: Config, runtime: Runtime, progress: bool, kind: str
    ) -> None:
        super().__init__(data, config, runtime, progress)
        if kind not in COMMITTEE_KINDS:
            raise UserError(f"unknown committee {kind!r}; one of {', '.join(COMMITTEE_KINDS)}")
        self.kind = kind
        self.members: list[UNet] = []

    def fit(self, ids: np.ndarray, masks: np.ndarray, seed: int) -> dict[str, Any]:
        self._seed = seed
        c = self.config.committee
        self.members = [self.new_model(derive_seed(seed, "init", m)) for m in range(c.members)]
        self.model = self.members[0]
        images, targets = self.data.images[ids], torch.from_numpy(masks).float()
        if self.kind == "ensemble":
            results = [
                fit(
                    member,
                    images,
                    targets,
                    *self._val,
                    self.config.train,
                    self.runtime,
                    torch_generator(derive_seed(seed, "member", m), self.runtime.device),
                    self.progress,
                )
                for m, member in enumerate(self.members)
            ]
            return {
                "init": "scratch",
                "val_dice": committee_dice(self.members, *self._val, self.runtime),
                "member_val_dice": [r.best_val_dice for r in results],
                "best_step": [r.best_step for r in results],
                "train_steps": results[0].steps,
                "final_loss": float(np.mean([r.final_loss for r in results])),
            }
        result = fit_svgd(
            self.members,
            images,
            targets,
            *self._val,
            self.config.train,
            self.runtime,
            torch_generator(seed, self.runtime.device),
            c.svgd_epsilon,
            c.svgd_repulsion,
            self.progress,
        )
        return {"init": "scratch", **_fit_info(result), "svgd": result.history}

    def checkpoint(self) -> dict[str, Any]:
        self.trained_model()
        return {"committee": self.kind, "members": [m.state_dict() for m in self.members]}

    def test_counts(self) -> tuple[torch.Tensor, dict[str, Any]]:
        self.trained_model()
        images, masks = self._test
        threshold = self.config.scoring.threshold
        probs = member_probabilities(self.members, images, self.runtime)
        target = masks >= 0.5
        members = [summarize(confusion(p >= threshold, target))["dice"] for p in probs]
        extra = {
            "test_member_dice": members,
            "test_member_disagreement": disagreement(probs, threshold),
        }
        return confusion(probs.mean(0) >= threshold, target)[:, None], extra

    def statistics(self, ids: np.ndarray, seed: int) -> McStats:
        self.trained_model()
        return committee_statistics(self.members, self.data.images[ids], self.runtime)


def _fit_info(result: FitResult | SvgdResult) -> dict[str, Any]:
    """The record fields of a training."""
    return {
        "val_dice": result.best_val_dice,
        "best_step": result.best_step,
        "train_steps": result.steps,
        "final_loss": result.final_loss,
    }


def make_learner(
    kind: str | None,
    data: Prepared,
    config: Config,
    runtime: Runtime,
    progress: bool,
    scorer: Scorer | None = None,
) -> UNetLearner:
    """The learner of a strategy's ``committee``: one U-Net with MC dropout for ``None``
    (scored by ``scorer`` if given; committees score their members in this process)."""
    if kind is None:
        return UNetLearner(data, config, runtime, progress, scorer)
    return CommitteeLearner(data, config, runtime, progress, kind)


@dataclass(frozen=True)
class SimulatedOracle:
    """Reveals the ground-truth masks ``[N, 1, P, P]`` of the requested patches."""

    masks: np.ndarray

    def reveal(self, ids: np.ndarray) -> np.ndarray:
        return self.masks[ids]


def validate(config: Config) -> None:
    """Reject inconsistent settings before any work starts."""
    loop_cfg, m, s = config.loop, config.model, config.scoring
    for name in loop_cfg.strategies:
        get_strategy(name, s.edt, s.threshold, s.cover_candidates)
    get_selection(loop_cfg.selection, loop_cfg.stochastic_groups)
    if len(set(loop_cfg.strategies)) != len(loop_cfg.strategies) or not loop_cfg.strategies:
        raise UserError(f"loop.strategies must be distinct and non-empty: {loop_cfg.strategies}")
    checks = [
        (loop_cfg.repetitions >= 1, "loop.repetitions must be >= 1"),
        (loop_cfg.iterations >= 0, "loop.iterations must be >= 0"),
        (loop_cfg.query_size >= 1, "loop.query_size (k) must be >= 1"),
        (
            loop_cfg.pool_policy in loop.POOL_POLICIES,
            f"loop.pool_policy must be one of {', '.join(loop.POOL_POLICIES)}",
        ),
        (loop_cfg.stochastic_groups >= 1, "loop.stochastic_groups must be >= 1"),
        (s.mc_samples >= 2, "scoring.mc_samples must be >= 2"),
        (s.mc_batch >= 1, "scoring.mc_batch must be >= 1"),
        (
            config.train.epochs >= 1 and config.train.steps_per_epoch >= 1,
            "train.epochs and train.steps_per_epoch must be >= 1",
        ),
        (config.train.batch_size >= 1, "train.batch_size must be >= 1"),
        (config.train.validate_every >= 1, "train.validate_every must be >= 1"),
        (config.train.loss in LOSSES, f"train.loss must be one of {', '.join(LOSSES)}"),
        (config.train.init in INITS, f"train.init must be one of {', '.join(INITS)}"),
        (config.train.warm_epochs >= 1, "train.warm_epochs must be >= 1"),
        (
            math.isfinite(config.train.warm_lr) and config.train.warm_lr > 0,
            f"train.warm_lr must be a positive number, got {config.train.warm_lr}",
        ),
        (
            config.train.patience >= 0 and config.train.warm_patience >= 0,
            "train.patience and train.warm_patience must be >= 0 (0: no early stopping)",
        ),
        (0.0 < config.train.fg_weight < 1.0, "train.fg_weight must be in (0, 1)"),
        (0.0 <= m.dropout < 1.0, "model.dropout must be in [0, 1)"),
        (s.edt in EDT_MODES, f"scoring.edt must be one of {', '.join(EDT_MODES)}"),
        (m.depth >= 2 and m.base_filters >= 1, "model.depth must be >= 2, base_filters >= 1"),
        (
            config.data.patch_size >= 2 ** (m.depth - 1)
            and config.data.patch_size % 2 ** (m.depth - 1) == 0,
            f"data.patch_size {config.data.patch_size} must be a multiple of "
            f"2**(model.depth-1) = {2 ** (m.depth - 1)}",
        ),
        *_data_checks(config),
        *_volume_checks(config),
        (
            math.isfinite(config.train.lr) and config.train.lr > 0,
            f"train.lr must be a positive number, got {config.train.lr}",
        ),
        (0.0 < s.threshold < 1.0, "scoring.threshold must be in (0, 1)"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    budget = config.data.n_pool
    needed = loop_cfg.iterations * loop_cfg.query_size
    if loop_cfg.pool_policy == "keep":
        needed = loop_cfg.query_size  # the pool never shrinks
    if budget is not None and needed > budget:
        raise UserError(
            f"{loop_cfg.iterations} iterations x k={loop_cfg.query_size} need {needed} pool "
            f"patches but data.n_pool is {budget}; lower loop.iterations or raise data.n_pool"
        )


def _data_checks(config: Config) -> list[tuple[bool, str]]:
    """(ok, message) pairs for the ``data`` section: pixel sizes positive, set sizes >= 1."""
    d = config.data
    sizes = {
        "data.pixel_size": d.pixel_size,
        "data.source_pixel_size (--pixel-size)": d.source_pixel_size,
    }
    checks = [
        (value is None or (math.isfinite(value) and value > 0),
         f"{key} must be a positive number of µm, got {value}; leave it out if unknown")
        for key, value in sizes.items()
    ]  # fmt: skip
    counts = {"data.n_initial": d.n_initial, "data.n_val": d.n_val, "data.n_test": d.n_test}
    checks += [(n >= 1, f"{key} must be >= 1, got {n}") for key, n in counts.items()]
    checks.append((d.n_pool is None or d.n_pool >= 0, f"data.n_pool must be >= 0, got {d.n_pool}"))
    return checks


def _volume_checks(config: Config) -> list[tuple[bool, str]]:
    """(ok, message) pairs for volumes and multi-class labels."""
    d, train = config.data, config.train
    volumes = d.spatial_dims == 3
    return [
        (d.spatial_dims in (2, 3), f"data.spatial_dims must be 2 or 3, got {d.spatial_dims}"),
        (d.num_classes >= 2, f"data.num_classes must be >= 2, got {d.num_classes}"),
        (
            d.num_classes == 2 or volumes,
            "data.num_classes > 2 needs volumes (data.spatial_dims=3); 2D masks are binary",
        ),
        (
            not (volumes and train.augment),
            "train.augment is for 2D images; set train.augment=false for volumes",
        ),
        (
            d.num_classes == 2 or not config.scoring.test_uncertainty,
            "scoring.test_uncertainty (AUROC, calibration) is defined for binary masks; "
            "set scoring.test_uncertainty=false",
        ),
        (
            d.num_classes == 2 or train.loss == "dice",
            f"train.loss={train.loss} is binary only; use train.loss=dice",
        ),
        (
            d.spacing is None or (math.isfinite(d.spacing) and d.spacing > 0),
            f"data.spacing must be a positive number of mm, got {d.spacing}",
        ),
        (
            d.clip is None or d.clip[0] < d.clip[1],
            f"data.clip must be (low, high) with low < high, got {d.clip}",
        ),
        (
            config.scoring.cover_candidates >= config.loop.query_size
            or "max_cover" not in config.loop.strategies,
            f"scoring.cover_candidates ({config.scoring.cover_candidates}) must be >= "
            f"loop.query_size ({config.loop.query_size}) for max_cover",
        ),
        (config.scoring.cover_candidates >= 1, "scoring.cover_candidates must be >= 1"),
        (
            d.num_classes == 2
            or not any(get_strategy(n).committee for n in config.loop.strategies),
            "committee strategies (ensemble, svgd, svgd_mi, <name>@<committee>) train binary "
            "U-Nets only; for data.num_classes > 2 use MC-dropout strategies (e.g. entropy, jsd)",
        ),
    ]


@dataclass(frozen=True)
class GridTask:
    """One independent unit of a simulation: the iterations of ``strategy`` in repetition
    ``repetition`` not yet recorded in the run directory ``out`` (``strategy`` ``None``:
    the repetition's upper bound). Picklable, to run in another process or on a Ray node."""

    config: Config
    out: Path
    repetition: int
    strategy: str | None
    shards: int = 1
    quiet: bool = True


@dataclass(frozen=True)
class TaskResult:
    """What a finished task did: ``trainings`` it ran; the upper-bound record, for the
    caller to store (its runs write their own records)."""

    task: GridTask
    trainings: int
    upper_bound: dict[str, Any] | None = None


def simulate(
    config: Config,
    out: Path,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
    execution: Execution | None = None,
) -> Path:
    """Run (or resume) the simulation of ``config`` into the run directory ``out``.

    The (strategy x repetition) runs and the upper bounds not yet finished are
    :class:`GridTask` s, executed as ``execution`` says (default: one after the other in
    this process; see :mod:`activeseg.grid`). Runs write their records, checkpoints and maps
    themselves; this process holds the directory's lock and stores the upper bounds."""
    validate(config)
    execution = execution or Execution()
    runtime = resolve(config.train.device, config.train.precision)
    lc = config.loop
    data = prepare(config.data)  # before the run directory: bad data must not leave a run
    needed = lc.query_size if lc.pool_policy == "keep" else lc.iterations * lc.query_size
    if needed > len(data.split.pool):
        raise UserError(
            f"the pool holds {len(data.split.pool)} patches but {lc.iterations} iterations x "
            f"k={lc.query_size} need {needed}; lower --iterations or -k"
        )
    with RunDirectory(out, config, resume) as run:
        run.load_or_save_split(data.split.to_dict())
        log(
            f"data: {len(data.patches)} patches of {config.data.patch_size}px; "
            f"initial {len(data.split.initial)}, pool {len(data.split.pool)}, "
            f"val {len(data.split.val)}, test {len(data.split.test)}; device {runtime.device}"
            f"{' bf16' if runtime.bf16 else ''}"
        )
        tasks, done = pending_tasks(run, config, execution.shards, quiet=not progress)
        total = lc.repetitions * (len(lc.strategies) * (lc.iterations + 1) + lc.upper_bound)
        bar = tqdm(total=total, initial=done, desc="trainings", disable=not progress, unit="it")
        executor = make_executor(execution, config.train.device)
        in_process = execution.workers == 1 and execution.ray is None

        def tick(line: str) -> None:  # in this process, the bar moves with each iteration
            log(line)
            bar.update()

        work = (
            functools.partial(execute_task, log=tick, progress=progress, data=data)
            if in_process
            else execute_task
        )
        for result in executor.run(work, tasks):
            if result.upper_bound is not None:
                run.append_upper_bound(result.upper_bound)
                r = result.upper_bound
                log(
                    f"upper bound rep {r['repetition']}: {r['n_labelled']} labelled, "
                    f"test dice {r['test_dice']:.3f}"
                )
            if not in_process or result.upper_bound is not None:
                bar.update(result.trainings)
        bar.close()
        remove_temporaries(out)  # of workers killed mid-write and retried; none is writing now
        size, files = disk_usage(out)
        log(f"run directory {out}: {size / 1e6:.1f} MB in {files} files")
    return out


def pending_tasks(
    run: RunDirectory, config: Config, shards: int = 1, quiet: bool = True
) -> tuple[list[GridTask], int]:
    """The unfinished tasks of ``run`` in the sequential order (per repetition: upper bound,
    then the strategies), and the number of trainings already recorded."""
    lc = config.loop
    tasks, done = [], 0
    upper_done = run.upper_bound_repetitions()
    for rep in range(lc.repetitions):
        if lc.upper_bound and rep not in upper_done:
            tasks.append(GridTask(config, run.root, rep, None, shards, quiet))
        done += lc.upper_bound and rep in upper_done
        for name in lc.strategies:
            n = len(run.records(name, rep))
            done += n
            if n < lc.iterations + 1:
                tasks.append(GridTask(config, run.root, rep, name, shards, quiet))
    return tasks, done


_PREPARED: dict[tuple[DataConfig, Path], Prepared] = {}
"""The data of the latest grid this worker process ran tasks of (it runs many)."""


def _log_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def execute_task(
    task: GridTask,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    data: Prepared | None = None,
) -> TaskResult:
    """Run one :class:`GridTask` in this process (any process that sees the run directory
    ``task.out``; its lock is held by the :func:`simulate` that made the task). Logs a line
    per iteration to ``log`` (default: stderr unless ``task.quiet``); ``data``: the prepared
    data (default: prepared here, once per grid and process)."""
    if log is None:
        log = (lambda line: None) if task.quiet else _log_to_stderr
    config, rep = task.config, task.repetition
    if data is None:
        key = (config.data, task.out)
        if key not in _PREPARED:
            _PREPARED.clear()
            _PREPARED[key] = prepare(config.data)
        data = _PREPARED[key]
    runtime = resolve(config.train.device, config.train.precision)
    s = config.scoring
    strategy = (
        None
        if task.strategy is None
        else get_strategy(task.strategy, s.edt, s.threshold, s.cover_candidates)
    )
    committee = None if strategy is None else strategy.committee
    scorer = None
    if task.shards > 1 and committee is None:
        from activeseg.shards import ShardedScorer

        scorer = ShardedScorer(data.images, task.shards, runtime)
    try:
        learner = make_learner(committee, data, config, runtime, progress, scorer)
        oracle = SimulatedOracle(data.masks)
        seed = derive_seed(config.loop.seed, rep)
        if strategy is None:
            return TaskResult(task, 1, upper_bound_record(learner, oracle, rep, seed))
        run = RunDirectory.attach(task.out)
        trainings = run_strategy(run, learner, oracle, strategy, rep, seed, log)
        return TaskResult(task, trainings)
    finally:
        if scorer is not None:
            scorer.close()


def run_strategy(
    run: RunDirectory,
    learner: UNetLearner,
    oracle: SimulatedOracle,
    strategy: Strategy,
    rep: int,
    seed: int,
    log: Callable[[str], None],
) -> int:
    """Continue ``strategy`` in repetition ``rep`` from its records to the end with
    ``learner`` (of the strategy's committee); returns the number of iterations run."""
    config = learner.config
    lc = config.loop
    name = strategy.name
    records = run.records(name, rep)
    state = loop.resume_state(
        learner.data.split.initial.tolist(),
        learner.data.split.pool.tolist(),
        records,
        lc.pool_policy,
    )
    warm = strategy.committee is None  # committees always train from scratch
    learner.start(_warm_weights(run, config, name, rep, len(records)) if warm else None)
    sink = _MapsSink(run, name, rep, lc.save_maps)

    def persist(it: loop.Iteration) -> None:
        sink.commit()
        _persist(run, learner, config, it, rep, seed)
        r = it.record
        log(
            f"{r['strategy']:>8} rep {rep} it {r['iteration']:2d}: "
            f"{r['n_labelled']:3d} labelled, test dice {r['test_dice']:.3f} "
            f"(train {r['seconds']['train']:.1f}s, score {r['seconds']['score']:.1f}s)"
        )

    try:
        loop.run(
            learner,
            oracle,
            strategy,
            state,
            lc.iterations,
            lc.query_size,
            seed,
            start=len(records),
            on_iteration=persist,
            chunk=pool_chunk(config.data.patch_size),
            on_chunk=sink,
            select=get_selection(lc.selection, lc.stochastic_groups),
            images=learner.data.images,
        )
    except TrainingDiverged as exc:
        done = len(run.records(name, rep))
        raise TrainingDiverged(
            f"{name} repetition {rep} iteration {done}: {exc}. The finished iterations "
            f"stay in {run.root}; a run holds one config, so start a new --out with the "
            "lower train.lr"
        ) from exc
    finally:
        sink.discard()
    return lc.iterations + 1 - len(records)


MAPS_CHUNK_BYTES = 16 * 2**20
"""Scoring works on chunks of the pool whose float32 maps take about this many bytes."""


def pool_chunk(patch_size: int) -> int:
    """Patches per scoring chunk for ``patch_size`` px patches: about 8 float32 maps of a
    patch (MC sums, mean, std, distance weights, ranking map) fit :data:`MAPS_CHUNK_BYTES`
    ``// 8`` each; at least 1 (128 patches of 64 px, 2 of 512 px)."""
    return max(1, MAPS_CHUNK_BYTES // (patch_size * patch_size * 4 * 8))


class _MapsSink:
    """Receives the scored chunks of one strategy and repetition and streams their maps
    (ranking ``map``, MC ``mean`` and ``std`` of the foreground probability, float16; for
    multi-class models of any foreground class) to the iteration's ``maps/`` file;
    :meth:`commit` puts the file in place. Nothing is written with ``enabled`` false or for
    a strategy without maps."""

    def __init__(self, run: RunDirectory, strategy: str, rep: int, enabled: bool) -> None:
        self.run, self.strategy, self.rep, self.enabled = run, strategy, rep, enabled
        self.writer: MapsWriter | None = None

    def __call__(self, chunk: loop.Chunk) -> None:
        if not self.enabled or chunk.scores.maps is None:
            return
        if self.writer is None:
            self.writer = self.run.maps_writer(
                self.strategy, self.rep, chunk.iteration, chunk.pool_size
            )
        maps = {"map": chunk.scores.maps}
        if chunk.stats is not None:
            mean, std = chunk.stats.mean[:, 0], chunk.stats.std[:, 0]
            if chunk.stats.mean.shape[1] > 1:  # softmax: channel 0 is the background
                mean = 1.0 - mean  # p(any foreground class); its std is the background's
            maps.update(std=std, mean=mean)
        arrays = {k: v.half().numpy() for k, v in maps.items()}
        self.writer.add(chunk.ids, chunk.scores.scores, **arrays)

    def commit(self) -> None:
        if self.writer is not None:
            self.writer.commit()
            self.writer = None

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.discard()
            self.writer = None


def upper_bound_record(
    learner: UNetLearner, oracle: SimulatedOracle, rep: int, seed: int
) -> dict[str, Any]:
    """Train once on every training patch (initial + pool) and evaluate: the record."""
    ids = learner.data.split.train
    learner.start(None)
    t0 = time.perf_counter()
    info = learner.fit(ids, oracle.reveal(ids), derive_seed(seed, "upper_bound"))
    t1 = time.perf_counter()
    metrics = learner.evaluate()
    seconds = {"train": t1 - t0, "eval": time.perf_counter() - t1}
    record = {"repetition": rep, "seed": seed, "n_labelled": len(ids), **metrics, **info}
    return {**record, "torch_threads": torch.get_num_threads(), "seconds": seconds}


def _warm_weights(
    run: RunDirectory, config: Config, strategy: str, rep: int, done: int
) -> dict[str, torch.Tensor] | None:
    """The weights iteration ``done`` of a resumed run fine-tunes with ``train.init=warm``:
    those of iteration ``done - 1`` from the checkpoint, or, if the run stopped after
    checkpointing iteration ``done`` but before recording it, the weights that iteration
    started from (kept in its checkpoint as ``warm_from``). ``None`` for a fresh sequence."""
    if done == 0 or config.train.init != "warm":
        return None
    checkpoint = run.load_checkpoint(strategy, rep)
    if checkpoint["iteration"] == done - 1:
        return checkpoint["model"]
    if checkpoint["iteration"] == done and checkpoint.get("warm_from") is not None:
        return checkpoint["warm_from"]
    raise UserError(
        f"cannot resume {strategy} repetition {rep}: its checkpoint holds iteration "
        f"{checkpoint['iteration']}, not {done - 1}; start a new --out"
    )


def _persist(
    run: RunDirectory, learner: UNetLearner, config: Config, it: loop.Iteration, rep: int, seed: int
) -> None:
    """Checkpoint first (the maps are in place already), the record last: a record marks a
    completed iteration; a crash before it only repeats the iteration, rewriting the same
    files."""
    name, i = it.record["strategy"], it.record["iteration"]
    run.save_checkpoint(
        name,
        rep,
        {
            **learner.checkpoint(),
            "iteration": i,
            "warm_from": learner.started_from,
            "config": to_dict(config),
            "normalizer": {
                "mean": learner.data.normalizer.mean,
                "std": learner.data.normalizer.std,
            },
        },
    )
    threads = torch.get_num_threads()  # results depend on it in the last bits (activeseg.grid)
    run.append_record(
        name, rep, {"repetition": rep, "seed": seed, "torch_threads": threads, **it.record}
    )
