"""The paper's simulation: strategies x repetitions of the active-learning loop on labelled
data, with the ground truth as oracle, written to a run directory (resumable).

This module wires the concrete pieces (data, U-Net learner, simulated oracle, run directory)
into :func:`activeseg.loop.run`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from activeseg import loop
from activeseg.acquisition import EDT_MODES, get_strategy
from activeseg.config import Config, DataConfig, to_dict
from activeseg.data.patches import Normalizer, PatchSet, Split, resample, split_by_source, tile
from activeseg.data.sources import load_source
from activeseg.errors import UserError
from activeseg.metrics import metrics_from_confusion, summarize, uncertainty_quality
from activeseg.model import UNet
from activeseg.rundir import RunDirectory
from activeseg.runtime import Runtime, derive_seed, resolve, torch_generator
from activeseg.scoring import McStats, mc_statistics
from activeseg.train import LOSSES, confusion_counts, fit


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
    """Load, resample, tile, split by source image and normalise."""
    samples = load_source(
        cfg.source,
        pixel_size=cfg.source_pixel_size,
        modality=cfg.modality,
        label_suffix=cfg.label_suffix,
        seed=cfg.split_seed,
    )
    patches = tile([resample(s, cfg.pixel_size) for s in samples], cfg.patch_size)
    split = split_by_source(
        patches, cfg.n_initial, cfg.n_val, cfg.n_test, cfg.n_pool, seed=cfg.split_seed
    )
    normalizer = Normalizer.fit(patches.images[split.train])
    images = torch.from_numpy(normalizer(patches.images))
    return Prepared(patches, split, normalizer, images, patches.masks)


class UNetLearner:
    """The :class:`activeseg.loop.Learner` of the simulation: a U-Net trained from scratch
    on the labelled patches, evaluated on the fixed test split, scored by MC dropout.

    With ``scoring.test_uncertainty`` the evaluation also runs MC dropout on the test patches
    (seeded from the training seed) and records ``test_uncertainty_auroc``, ``test_ece`` and
    ``test_reliability`` (see :func:`activeseg.metrics.uncertainty_quality`).
    """

    def __init__(self, data: Prepared, config: Config, runtime: Runtime, progress: bool) -> None:
        self.data = data
        self.config = config
        self.runtime = runtime
        self.progress = progress
        self.model: UNet | None = None
        self._seed = 0  # the seed of the latest fit()
        val = data.split.val
        self._val = (data.images[val], torch.from_numpy(data.masks[val]).float())
        test = data.split.test
        self._test = (data.images[test], torch.from_numpy(data.masks[test]))

    def new_model(self, seed: int) -> UNet:
        """A freshly initialised U-Net; initialisation draws from ``seed`` only (the global
        RNG state is restored afterwards)."""
        m = self.config.model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return UNet(1, 1, m.depth, m.base_filters, m.dropout)

    def fit(self, ids: np.ndarray, masks: np.ndarray, seed: int) -> dict[str, Any]:
        self._seed = seed
        self.model = self.new_model(derive_seed(seed, "init"))
        result = fit(
            self.model,
            self.data.images[ids],
            torch.from_numpy(masks).float(),
            *self._val,
            self.config.train,
            self.runtime,
            torch_generator(seed, self.runtime.device),
            self.progress,
        )
        return {
            "val_dice": result.best_val_dice,
            "best_step": result.best_step,
            "train_steps": result.steps,
            "final_loss": result.final_loss,
        }

    def trained_model(self) -> UNet:
        if self.model is None:
            raise RuntimeError("fit() must run before evaluate() or statistics()")
        return self.model

    def evaluate(self) -> dict[str, Any]:
        images, masks = self._test
        threshold = self.config.scoring.threshold
        counts = confusion_counts(self.trained_model(), images, masks, self.runtime, threshold)
        out: dict[str, Any] = {f"test_{k}": v for k, v in summarize(counts).items()}
        out["test_dice_per_patch"] = metrics_from_confusion(counts)["dice"].tolist()
        if self.config.scoring.test_uncertainty:
            stats = self.statistics(self.data.split.test, derive_seed(self._seed, "test_mc"))
            quality = uncertainty_quality(stats.mean, stats.std, masks, threshold)
            out.update({f"test_{k}": v for k, v in quality.items()})
        return out

    def statistics(self, ids: np.ndarray, seed: int) -> McStats:
        s = self.config.scoring
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
        get_strategy(name, s.edt, s.threshold)
    if len(set(loop_cfg.strategies)) != len(loop_cfg.strategies) or not loop_cfg.strategies:
        raise UserError(f"loop.strategies must be distinct and non-empty: {loop_cfg.strategies}")
    checks = [
        (loop_cfg.repetitions >= 1, "loop.repetitions must be >= 1"),
        (loop_cfg.iterations >= 0, "loop.iterations must be >= 0"),
        (loop_cfg.query_size >= 1, "loop.query_size (k) must be >= 1"),
        (s.mc_samples >= 2, "scoring.mc_samples must be >= 2"),
        (s.mc_batch >= 1, "scoring.mc_batch must be >= 1"),
        (
            config.train.epochs >= 1 and config.train.steps_per_epoch >= 1,
            "train.epochs and train.steps_per_epoch must be >= 1",
        ),
        (config.train.batch_size >= 1, "train.batch_size must be >= 1"),
        (config.train.validate_every >= 1, "train.validate_every must be >= 1"),
        (config.train.loss in LOSSES, f"train.loss must be one of {', '.join(LOSSES)}"),
        (0.0 < config.train.fg_weight < 1.0, "train.fg_weight must be in (0, 1)"),
        (0.0 <= m.dropout < 1.0, "model.dropout must be in [0, 1)"),
        (s.edt in EDT_MODES, f"scoring.edt must be one of {', '.join(EDT_MODES)}"),
        (
            config.data.patch_size % 2 ** (m.depth - 1) == 0,
            f"data.patch_size {config.data.patch_size} must be a multiple of "
            f"2**(model.depth-1) = {2 ** (m.depth - 1)}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    budget = config.data.n_pool
    needed = loop_cfg.iterations * loop_cfg.query_size
    if budget is not None and needed > budget:
        raise UserError(
            f"{loop_cfg.iterations} iterations x k={loop_cfg.query_size} need {needed} pool "
            f"patches but data.n_pool is {budget}; lower loop.iterations or raise data.n_pool"
        )


def simulate(
    config: Config,
    out: Path,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
) -> Path:
    """Run (or resume) the simulation of ``config`` into the run directory ``out``."""
    validate(config)
    runtime = resolve(config.train.device, config.train.precision)
    strategies = [
        get_strategy(n, config.scoring.edt, config.scoring.threshold)
        for n in config.loop.strategies
    ]
    lc = config.loop
    data = prepare(config.data)  # before the run directory: bad data must not leave a run
    if lc.iterations * lc.query_size > len(data.split.pool):
        raise UserError(f"the pool holds {len(data.split.pool)} patches, fewer than iterations x k")
    with RunDirectory(out, config, resume) as run:
        run.load_or_save_split(data.split.to_dict())
        log(
            f"data: {len(data.patches)} patches of {config.data.patch_size}px; "
            f"initial {len(data.split.initial)}, pool {len(data.split.pool)}, "
            f"val {len(data.split.val)}, test {len(data.split.test)}; device {runtime.device}"
            f"{' bf16' if runtime.bf16 else ''}"
        )
        learner = UNetLearner(data, config, runtime, progress)
        oracle = SimulatedOracle(data.masks)
        total = lc.repetitions * len(strategies) * (lc.iterations + 1)
        bar = tqdm(total=total, desc="iterations", disable=not progress, unit="it")
        for rep in range(lc.repetitions):
            seed = derive_seed(lc.seed, rep)
            if lc.upper_bound and rep not in run.upper_bound_repetitions():
                _upper_bound(run, learner, oracle, rep, seed, log)
            for strategy in strategies:
                records = run.records(strategy.name, rep)
                bar.update(len(records))
                if len(records) == lc.iterations + 1:
                    continue
                state = loop.resume_state(
                    data.split.initial.tolist(), data.split.pool.tolist(), records
                )

                def persist(it: loop.Iteration, rep: int = rep, seed: int = seed) -> None:
                    _persist(run, learner, config, it, rep, seed)
                    r = it.record
                    log(
                        f"{r['strategy']:>8} rep {rep} it {r['iteration']:2d}: "
                        f"{r['n_labelled']:3d} labelled, test dice {r['test_dice']:.3f} "
                        f"(train {r['seconds']['train']:.1f}s, score {r['seconds']['score']:.1f}s)"
                    )
                    bar.update()

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
                )
        bar.close()
    return out


def _upper_bound(
    run: RunDirectory,
    learner: UNetLearner,
    oracle: SimulatedOracle,
    rep: int,
    seed: int,
    log: Callable[[str], None],
) -> None:
    """Train once on every training patch (initial + pool), evaluate, store the record."""
    ids = learner.data.split.train
    t0 = time.perf_counter()
    info = learner.fit(ids, oracle.reveal(ids), derive_seed(seed, "upper_bound"))
    t1 = time.perf_counter()
    metrics = learner.evaluate()
    seconds = {"train": t1 - t0, "eval": time.perf_counter() - t1}
    record = {"repetition": rep, "seed": seed, "n_labelled": len(ids), **metrics, **info}
    run.append_upper_bound({**record, "seconds": seconds})
    log(f"upper bound rep {rep}: {len(ids)} labelled, test dice {metrics['test_dice']:.3f}")


def _persist(
    run: RunDirectory, learner: UNetLearner, config: Config, it: loop.Iteration, rep: int, seed: int
) -> None:
    """Maps and checkpoint first, the record last: a record marks a completed iteration."""
    name, i = it.record["strategy"], it.record["iteration"]
    if config.loop.save_maps and it.scores is not None and it.scores.maps is not None:
        arrays = {"ids": it.pool, "scores": it.scores.scores, "map": it.scores.maps.half().numpy()}
        if it.stats is not None:
            arrays["std"] = it.stats.std[:, 0].half().numpy()
            arrays["mean"] = it.stats.mean[:, 0].half().numpy()
        run.save_maps(name, rep, i, **arrays)
    model = learner.trained_model()
    run.save_checkpoint(
        name,
        rep,
        {
            "model": model.state_dict(),
            "iteration": i,
            "config": to_dict(config),
            "normalizer": {
                "mean": learner.data.normalizer.mean,
                "std": learner.data.normalizer.std,
            },
        },
    )
    run.append_record(name, rep, {"repetition": rep, "seed": seed, **it.record})
