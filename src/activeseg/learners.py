"""Learners: the networks an active-learning loop trains, evaluates and scores, and their
one checkpoint format. Simulation and annotation projects use the same learners, so a
strategy or a setting that works in one works in the other.

* :class:`ModelLearner`: one network trained on the labelled patches and scored by MC
  dropout. By default the paper's U-Net (:func:`activeseg.model.seeded_unet`; MC scoring
  reuses its mask-independent stem); any ``torch.nn.Module`` with dropout works too
  (``network``: a factory called under a seeded RNG; its ``torch.nn.Dropout`` layers become
  seeded :class:`~activeseg.model.MCDropout`, as baal's ``patch_module`` does).
* :class:`CommitteeLearner`: ``committee.members`` networks, an independent ``ensemble``
  or SVGD particles (:mod:`activeseg.committee`), whose members play the MC samples.

A learner knows its data as :class:`LearnerData`: every patch's normalised image by id (what
the loop's ids index), a validation set and, for evaluation, a test set.

Checkpoint format (:func:`checkpoint`, :func:`restore`), the same for a simulation's
``checkpoints/*.pt`` and a project's ``model/model.pt``: a dict with ``format``
(:data:`CHECKPOINT_FORMAT`), ``config`` (the resolved config as a dict), ``normalizer``
(``{"mode": "global", "mean", "std"}`` or ``{"mode": "per_image"}``), ``committee``
(``None`` or its kind), ``models`` (one ``state_dict`` per network: one, or the members),
plus what the caller adds (a simulation's ``iteration`` and ``warm_from``, a project's
``round`` and ``annotations``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from activeseg.committee import (
    SvgdResult,
    committee_dice,
    committee_statistics,
    disagreement,
    fit_members,
    fit_svgd,
    member_probabilities,
)
from activeseg.config import COMMITTEE_KINDS, Config, from_dict, to_dict
from activeseg.data.prepare import PER_IMAGE
from activeseg.errors import UserError
from activeseg.metrics import per_item_dice, summarize_classes, uncertainty_quality
from activeseg.model import output_channels, patch_dropout, seeded_unet
from activeseg.runtime import Runtime, derive_seed
from activeseg.scoring import McStats, mc_statistics
from activeseg.train import (
    FitResult,
    Labelled,
    class_confusion_counts,
    evaluate,
    fit,
    predict,
    probability_confusion,
)

CHECKPOINT_FORMAT = 2

NetworkFactory = Callable[[], nn.Module]
"""Builds a fresh network mapping ``[B, 1, *S]`` images to logits ``[B, C, *S]`` (C = 1 for
binary masks, else one per class); called under a seeded RNG, so its initialisation is
reproducible. Must be picklable by ``cloudpickle`` to run on ``workers`` or Ray."""


@dataclass(frozen=True)
class LearnerData:
    """``images``: every patch by id, normalised float32 ``[N, 1, *S]``; ``val``: the
    labelled patches of model selection during training; ``test``: those of the evaluation
    (``None``: the learner cannot :meth:`~ModelLearner.evaluate`)."""

    images: torch.Tensor
    val: Labelled
    test: Labelled | None = None


class Scorer(Protocol):
    """Scores patches elsewhere (e.g. :class:`activeseg.simulation.shards.ShardedScorer`):
    receives each trained model once, then MC statistics of any patch ids of the data."""

    def set_model(self, model: nn.Module) -> None: ...

    def statistics(self, ids: Any, samples: int, batch: int, seed: int) -> McStats: ...


class ModelLearner:
    """One network trained from scratch on the labelled patches, evaluated on the test set,
    scored by MC dropout (in this process, or by ``scorer`` with the same result).

    With ``scoring.test_uncertainty`` the evaluation also runs MC dropout on the test patches
    (seeded from the training seed) and records ``test_uncertainty_auroc``, ``test_ece`` and
    ``test_reliability`` (see :func:`activeseg.metrics.uncertainty_quality`). With
    ``train.init=warm``, :meth:`fit` fine-tunes the weights given to :meth:`start` (or those
    of the previous :meth:`fit`) on the warm schedule; without such weights it starts from
    scratch.
    """

    committee: str | None = None

    def __init__(
        self,
        data: LearnerData,
        config: Config,
        runtime: Runtime,
        *,
        progress: bool = False,
        network: NetworkFactory | None = None,
        scorer: Scorer | None = None,
    ) -> None:
        self.data, self.config, self.runtime = data, config, runtime
        self.progress, self.network, self.scorer = progress, network, scorer
        self.models: list[nn.Module] = []
        self._seed = 0  # the seed of the latest fit()
        self.warm_from: dict[str, torch.Tensor] | None = None  # weights the next fit() tunes
        self.started_from: dict[str, torch.Tensor] | None = None  # those the latest fit() tuned

    # ---- networks ----------------------------------------------------------------------
    def new_model(self, seed: int) -> nn.Module:
        """A freshly initialised network whose initialisation draws from ``seed`` only (the
        global RNG state is restored afterwards)."""
        if self.network is None:
            m, d = self.config.model, self.config.data
            channels = output_channels(d.num_classes)
            return seeded_unet(seed, m.depth, m.base_filters, m.dropout, channels, d.spatial_dims)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.network()
        if not isinstance(model, nn.Module):
            raise UserError(f"the network factory returned {type(model).__name__}, not a Module")
        return patch_dropout(model)

    @property
    def model(self) -> nn.Module:
        """The trained network (a committee's first member)."""
        if not self.models:
            raise RuntimeError(
                "fit() must run before the model is used (or load() trained weights)"
            )
        return self.models[0]

    def start(self, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Begin a new sequence of fits (a strategy and repetition): with ``train.init=warm``
        the next :meth:`fit` tunes ``weights``, or starts from scratch if ``None``."""
        self.warm_from = weights

    # ---- training ----------------------------------------------------------------------
    def fit(self, ids: np.ndarray, masks: np.ndarray, seed: int) -> dict[str, Any]:
        """Train on patches ``ids`` with ``masks`` ``[k, 1, *S]``; the record fields."""
        self._seed = seed
        cfg = self.config.train
        model = self.new_model(derive_seed(seed, "init"))
        warm = cfg.init == "warm" and self.warm_from is not None
        self.started_from = self.warm_from if warm else None
        if self.started_from is not None:
            model.load_state_dict(self.started_from)
        self.models = [model]
        result = fit(
            model,
            self._labelled(ids, masks),
            self.data.val,
            cfg.warm() if warm else cfg,
            self.runtime,
            self.runtime.generator(seed),
            self.progress,
        )
        if cfg.init == "warm":
            self.warm_from = copy.deepcopy(model.state_dict())
        if self.scorer is not None:
            self.scorer.set_model(model)
        return {"init": "warm" if warm else "scratch", **fit_info(result)}

    def _labelled(self, ids: np.ndarray, masks: np.ndarray) -> Labelled:
        return Labelled(self.data.images[ids], torch.from_numpy(masks).float())

    # ---- predictions -------------------------------------------------------------------
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Deterministic probabilities ``[N, C, *S]`` (float32, CPU) of ``images``."""
        return predict(self.model, images, self.runtime)

    def mc(self, images: torch.Tensor, ids: list[int], seed: int) -> McStats:
        """MC-dropout statistics of ``images`` ``[N, 1, *S]``; each image's masks are
        seeded by ``(seed, its id)``."""
        s = self.config.scoring
        return mc_statistics(
            self.model, images, ids, s.mc_samples, s.mc_batch, seed, self.runtime, self.progress
        )

    def statistics(self, ids: np.ndarray, seed: int) -> McStats:
        """MC statistics of patches ``ids`` (the loop's scoring)."""
        if self.scorer is not None:
            s = self.config.scoring
            return self.scorer.statistics(ids, s.mc_samples, s.mc_batch, seed)
        return self.mc(self.data.images[ids], ids.tolist(), seed)

    def features(self, ids: np.ndarray, batch: int = 16) -> np.ndarray:
        """Descriptors ``[k, F]`` (float64) of patches ``ids`` in evaluation mode: the
        network's ``features(x)`` (the U-Net bottleneck averaged over space)."""
        model = self.model
        if not callable(getattr(model, "features", None)):
            raise UserError(
                "this strategy needs patch descriptors: give your network a method "
                "features(x) -> [B, F] (the built-in U-Net has one)"
            )
        self.runtime.place(model)
        model.eval()
        parts = []
        for start in range(0, len(ids), batch):
            x = self.runtime.tensor(self.data.images[ids[start : start + batch]])
            with torch.inference_mode(), self.runtime.autocast():
                parts.append(model.features(x).double().cpu())  # type: ignore[operator]
        return torch.cat(parts).numpy() if parts else np.empty((0, 0))

    # ---- evaluation --------------------------------------------------------------------
    def _test(self) -> Labelled:
        if self.data.test is None:
            raise RuntimeError("this learner has no test set")
        return self.data.test

    def test_counts(self) -> tuple[torch.Tensor, dict[str, Any]]:
        """Per-patch, per-foreground-class confusion counts ``[N, K, 4]`` on the test set,
        and extra metrics."""
        images, masks = self._test()
        threshold = self.config.scoring.threshold
        return class_confusion_counts(self.model, images, masks, self.runtime, threshold), {}

    def evaluate(self) -> dict[str, Any]:
        """Test metrics of the current model (record fields ``test_*``) and
        ``eval_seconds``: the seconds of the ``test_metrics`` (batched predictions and
        confusion counts) and of the ``test_mc`` statistics (0 without
        ``scoring.test_uncertainty``), which the loop adds to the record's ``seconds``."""
        start = time.perf_counter()
        counts, extra = self.test_counts()
        out: dict[str, Any] = {f"test_{k}": v for k, v in summarize_classes(counts).items()}
        out |= extra
        out["test_dice_per_patch"] = per_item_dice(counts)
        middle = time.perf_counter()
        if self.config.scoring.test_uncertainty:
            images, masks = self._test()
            stats = self.mc(images, list(range(len(images))), derive_seed(self._seed, "test_mc"))
            quality = uncertainty_quality(
                stats.mean, stats.std, masks, self.config.scoring.threshold
            )
            out.update({f"test_{k}": v for k, v in quality.items()})
        end = time.perf_counter()
        out["eval_seconds"] = {"test_metrics": middle - start, "test_mc": end - middle}
        return out

    # ---- checkpoints -------------------------------------------------------------------
    def state(self) -> list[dict[str, torch.Tensor]]:
        """The weights of the trained network(s)."""
        _ = self.model  # raises before any fit
        return [m.state_dict() for m in self.models]

    def load(self, states: list[dict[str, torch.Tensor]]) -> None:
        """Use the networks of ``states`` (from :meth:`state`) as the trained ones."""
        models = [self.new_model(0) for _ in states]
        for model, state in zip(models, states, strict=True):
            model.load_state_dict(state)
            model.eval()
        self.models = models
        if self.scorer is not None:
            self.scorer.set_model(models[0])


class CommitteeLearner(ModelLearner):
    """A committee of ``committee.members`` networks: ``kind`` ``ensemble`` (independent
    trainings with seeds ``(seed, "member", m)``) or ``svgd`` (particles initialised like the
    ensemble's members, trained jointly by SVGD), for any number of classes. Evaluation labels
    the committee-mean probability (threshold, or arg-max of C softmax channels) and also
    records each member's test Dice (``test_member_dice``, mean over foreground classes) and
    the fraction of test pixels where the members' predicted labels differ
    (``test_member_disagreement``); statistics are over the members. Committees always train
    from scratch (``train.init = warm`` applies to single networks)."""

    def __init__(
        self, data: LearnerData, config: Config, runtime: Runtime, kind: str, **options: Any
    ) -> None:
        super().__init__(data, config, runtime, **options)
        if kind not in COMMITTEE_KINDS:
            raise UserError(f"unknown committee {kind!r}; one of {', '.join(COMMITTEE_KINDS)}")
        self.committee = kind

    def fit(self, ids: np.ndarray, masks: np.ndarray, seed: int) -> dict[str, Any]:
        self._seed = seed
        c, cfg = self.config.committee, self.config.train
        self.models = [self.new_model(derive_seed(seed, "init", m)) for m in range(c.members)]
        train = self._labelled(ids, masks)
        if self.committee == "svgd":
            result = fit_svgd(
                self.models,
                train,
                self.data.val,
                cfg,
                self.runtime,
                self.runtime.generator(seed),
                c.svgd_epsilon,
                c.svgd_repulsion,
                self.progress,
            )
            return {"init": "scratch", **fit_info(result), "svgd": result.history}
        generators = [
            self.runtime.generator(derive_seed(seed, "member", m)) for m in range(c.members)
        ]
        results, _ = fit_members(
            self.models, train, self.data.val, cfg, self.runtime, generators, None, self.progress
        )
        return {
            "init": "scratch",
            "val_dice": committee_dice(self.models, *self.data.val, self.runtime),
            "member_val_dice": [r.best_val_dice for r in results],
            "best_step": [r.best_step for r in results],
            "train_steps": results[0].steps,
            "final_loss": float(np.mean([r.final_loss for r in results])),
        }

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """The committee-mean probabilities ``[N, C, *S]``."""
        return member_probabilities(self.models, images, self.runtime).mean(0)

    def mc(self, images: torch.Tensor, ids: list[int], seed: int) -> McStats:
        """Statistics over the members (deterministic; ``ids`` and ``seed`` unused)."""
        _ = self.model  # raises before any fit
        return committee_statistics(self.models, images, self.runtime)

    def test_counts(self) -> tuple[torch.Tensor, dict[str, Any]]:
        """Counts ``[N, K, 4]`` of the committee-mean prediction; each member's test Dice
        (mean over the K foreground classes) and the members' disagreement as extras."""
        images, masks = self._test()
        threshold = self.config.scoring.threshold
        probs = member_probabilities(self.models, images, self.runtime)
        members = [
            summarize_classes(probability_confusion(p, masks, threshold))["dice"] for p in probs
        ]
        extra = {
            "test_member_dice": members,
            "test_member_disagreement": disagreement(probs, threshold),
        }
        return probability_confusion(probs.mean(0), masks, threshold), extra


def validation_dice(learner: ModelLearner) -> float:
    """The Dice of ``learner``'s trained network(s) on its validation set, as training
    measures it to keep its best weights (a committee: of the members' mean)."""
    val = learner.data.val
    if learner.committee is not None:
        return committee_dice(learner.models, val.images, val.masks, learner.runtime)
    return float(evaluate(learner.model, val.images, val.masks, learner.runtime)["dice"])


def fit_info(result: FitResult | SvgdResult) -> dict[str, Any]:
    """The record fields of a training."""
    return {
        "val_dice": result.best_val_dice,
        "best_step": result.best_step,
        "train_steps": result.steps,
        "final_loss": result.final_loss,
    }


def make_learner(
    committee: str | None, data: LearnerData, config: Config, runtime: Runtime, **options: Any
) -> ModelLearner:
    """The learner of a strategy's ``committee``: one network with MC dropout for ``None``,
    else a :class:`CommitteeLearner`; ``options``: ``progress``, ``network`` and (one
    network only: committees score their members in this process) ``scorer``."""
    if committee is None:
        return ModelLearner(data, config, runtime, **options)
    options.pop("scorer", None)
    return CommitteeLearner(data, config, runtime, committee, **options)


# ----------------------------------------------------------------------------- checkpoints


def checkpoint(learner: ModelLearner, normalizer: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The checkpoint of ``learner``'s trained network(s) (format in the module docstring);
    ``normalizer``: how its inputs were standardised; ``extra``: the caller's fields."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": to_dict(learner.config),
        "normalizer": normalizer,
        "committee": learner.committee,
        "models": learner.state(),
        **extra,
    }


def read_checkpoint(payload: dict[str, Any], where: str) -> tuple[Config, dict[str, Any]]:
    """The config of a checkpoint ``payload`` and the payload, checked for the format
    (``where`` names the file in errors)."""
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"{where} is not an activeseg checkpoint of format {CHECKPOINT_FORMAT} (written "
            "by another version of activeseg?); retrain or export it again"
        )
    if payload.get("normalizer") != PER_IMAGE:
        raise UserError(
            f"{where}: its model was trained on inputs standardised by one global mean and std "
            "(an earlier activeseg); models now standardise each image by its own: retrain it"
        )
    return from_dict(payload["config"], where), payload


def restore(
    payload: dict[str, Any],
    data: LearnerData,
    runtime: Runtime,
    progress: bool = False,
    network: NetworkFactory | None = None,
    where: str = "checkpoint",
) -> ModelLearner:
    """The learner of a checkpoint, ready to predict and score ``data``."""
    config, payload = read_checkpoint(payload, where)
    learner = make_learner(
        payload["committee"], data, config, runtime, progress=progress, network=network
    )
    learner.load(payload["models"])
    return learner


__all__ = [
    "CHECKPOINT_FORMAT",
    "CommitteeLearner",
    "LearnerData",
    "ModelLearner",
    "NetworkFactory",
    "Scorer",
    "checkpoint",
    "fit_info",
    "make_learner",
    "read_checkpoint",
    "restore",
    "validation_dice",
]
