"""Training and evaluation of a segmentation model on in-memory patches.

Knows nothing of active learning: :func:`fit` takes labelled patches and a validation set and
returns the model with the weights of its best validation Dice. The pieces every training
shares (:func:`make_optimizer`, :func:`training_batches`, :class:`BestState`,
:func:`check_finite`) are also those of the SVGD committee (:mod:`activeseg.committee`).
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from activeseg.config import LOSSES, SCHEDULES, TrainConfig
from activeseg.console import progress_bar
from activeseg.errors import TrainingDiverged, UserError
from activeseg.metrics import confusion, summarize_classes
from activeseg.model import predicted_labels, probabilities, seeded_dropout
from activeseg.runtime import Runtime


class WeightedBCE(nn.Module):
    """Binary cross-entropy on logits ``[B, 1, H, W]`` weighting foreground pixels by
    ``fg_weight`` and background pixels by ``1 - fg_weight`` (paper: 0.3 / 0.7)."""

    def __init__(self, fg_weight: float = 0.3) -> None:
        super().__init__()
        if not 0.0 < fg_weight < 1.0:
            raise ValueError(f"fg_weight must be in (0, 1), got {fg_weight}")
        self.fg_weight = fg_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = target * self.fg_weight + (1.0 - target) * (1.0 - self.fg_weight)
        return F.binary_cross_entropy_with_logits(logits, target, weight=weight)


class Labelled(NamedTuple):
    """Labelled patches: normalised ``images`` float32 ``[N, 1, *S]`` and their ``masks``
    ``[N, 1, *S]`` (float {0, 1}, or labels 0 .. C-1 for C > 2 classes)."""

    images: torch.Tensor
    masks: torch.Tensor


def make_loss(name: str, fg_weight: float, channels: int = 1) -> tuple[nn.Module, nn.Module]:
    """Losses for the first and second half of training (equal unless ``dice_then_wbce``).

    ``name`` is a :data:`~activeseg.config.LOSSES` choice (``auto``: ``dice_ce`` for
    several foreground classes, else ``dice``). Dice is MONAI's ``DiceLoss`` over the
    whole batch (``batch=True``: patches without foreground do not produce a degenerate
    per-item Dice), on sigmoid probabilities of one channel; for ``channels`` > 1
    (multi-class logits, targets are labels ``[B, 1, *S]``) on softmax probabilities of the
    foreground classes (background excluded, as in the binary case). ``dice_ce`` adds MONAI's
    cross-entropy term (binary: BCE) with equal weight (``DiceCELoss``).
    """
    if name == "auto":
        name = "dice_ce" if channels > 2 else "dice"
    if name not in LOSSES:
        raise UserError(f"train.loss: {name!r} is not one of {', '.join(LOSSES)}")
    if channels > 1:
        if name in ("dice", "dice_ce"):
            kind = DiceLoss if name == "dice" else DiceCELoss
            multi = kind(softmax=True, to_onehot_y=True, include_background=False, batch=True)
        else:
            raise UserError(f"train.loss={name} is binary only; use train.loss=dice_ce")
        return multi, multi
    if name == "dice_ce":
        both = DiceCELoss(sigmoid=True, batch=True)
        return both, both
    dice = DiceLoss(sigmoid=True, batch=True)
    wbce = WeightedBCE(fg_weight)
    first = wbce if name == "wbce" else dice
    second = dice if name == "dice" else wbce
    return first, second


def augment(
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    labels: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random affine warp per item, identical for image and mask (never in place).

    ``images`` float ``[B, 1, H, W]``, ``masks`` float ``[B, 1, H, W]``: {0, 1}, or with
    ``labels`` label maps 0 .. C-1. The paper's Keras augmentation: shift up to 10 %,
    rotation up to 10 degrees, horizontal/vertical flip, zoom in [1/1.2, 1.2] (log-uniform).
    Borders replicate (Keras ``fill_mode="nearest"``). A binary mask is warped bilinearly
    and thresholded at 0.5, so it stays binary; a label map is warped by nearest neighbour
    (interpolating labels would invent classes between them: 1.5 between axon and myelin).
    """
    b = images.shape[0]
    u = torch.rand(b, 6, generator=generator, device=generator.device).to(images.device)
    angle = (u[:, 0] * 2 - 1) * math.radians(10.0)
    zoom = torch.exp((u[:, 1] * 2 - 1) * math.log(1.2))
    shift = (u[:, 2:4] * 2 - 1) * 0.2  # normalised coordinates span 2: 10 % of the size
    flip = torch.where(u[:, 4:6] < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [
            torch.stack([cos * flip[:, 0], -sin * flip[:, 1], shift[:, 0]], 1),
            torch.stack([sin * flip[:, 0], cos * flip[:, 1], shift[:, 1]], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warp = functools.partial(F.grid_sample, grid=grid, padding_mode="border", align_corners=False)
    image = warp(images).contiguous(memory_format=torch.channels_last)
    if labels:
        return image, warp(masks, mode="nearest")
    return image, (warp(masks) >= 0.5).to(masks.dtype)


ADAM_EPS = 1e-8  # torch's default


def make_optimizer(
    params: Iterable[nn.Parameter], cfg: TrainConfig, total: int, eps: float = ADAM_EPS
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LRScheduler]:
    """Adam (fused: one kernel per step) on ``params`` and its learning-rate schedule over
    ``total`` steps, to be stepped once per update (``cfg.schedule``, see
    :class:`~activeseg.config.TrainConfig`). The one optimiser of every training
    (:func:`fit` and the committees)."""
    optimizer = torch.optim.Adam(params, lr=cfg.lr, eps=eps, fused=True)
    warmup = min(cfg.warmup_steps, max(total - 1, 0))
    shape = schedule_factor(cfg.schedule, cfg.lr / max(cfg.epochs, 1), max(total - warmup, 1))

    def factor(step: int) -> float:  # linear warm-up, then the schedule over the rest
        return (step + 1) / warmup if step < warmup else shape(step - warmup)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


COSINE_FLOOR = 0.01  # the cosine schedule ends at lr * COSINE_FLOOR
POLY_EXPONENT = 0.9  # nnU-Net's


def schedule_factor(name: str, decay: float, total: int) -> Callable[[int], float]:
    """The multiplier of the learning rate at step 0, 1, ... of a ``total``-step training:
    ``keras`` ``1 / (1 + decay * step)``; ``cosine`` from 1 down to :data:`COSINE_FLOOR` at
    ``step = total``; ``poly`` ``(1 - step / total) ** 0.9`` (floored at 0)."""
    if name == "keras":
        return lambda step: 1.0 / (1.0 + decay * step)
    if name == "cosine":
        return lambda step: (
            COSINE_FLOOR
            + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        )
    if name == "poly":
        return lambda step: max(0.0, 1 - step / total) ** POLY_EXPONENT
    raise UserError(f"train.schedule: {name!r} is not one of {', '.join(SCHEDULES)}")


class BestState:
    """The best validation Dice seen so far, its step and a copy of the weights of the
    ``models`` (one network, or a committee's members) at that step."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        self.dice, self.step = -1.0, 0
        self.states = [copy.deepcopy(m.state_dict()) for m in models]

    def offer(self, dice: float, step: int, models: Sequence[nn.Module]) -> bool:
        """Keep the weights of ``models`` if ``dice`` beats the best; whether it did."""
        if dice <= self.dice:
            return False
        self.dice, self.step = dice, step
        self.states = [copy.deepcopy(m.state_dict()) for m in models]
        return True

    def restore(self, models: Sequence[nn.Module]) -> None:
        """Load the best weights into ``models`` and put them in evaluation mode."""
        for model, state in zip(models, self.states, strict=True):
            model.load_state_dict(state)
            model.eval()


def training_batches(
    train: Labelled, cfg: TrainConfig, runtime: Runtime, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless training batches ``[batch_size, 1, *S]`` of ``train`` on ``runtime``'s device:
    drawn without replacement from reshuffled epochs (with replacement when
    ``N < batch_size``), augmented by :func:`augment` if ``cfg.augment`` (masks holding a
    label above 1 as label maps); every draw comes from ``generator``."""
    images, masks = runtime.tensor(train.images), runtime.tensor(train.masks)
    labels = bool(masks.numel()) and bool(masks.max() > 1)
    order = _batches(len(images), cfg.batch_size, generator)
    while True:
        idx = next(order).to(images.device)
        x, y = images[idx], masks[idx]
        yield augment(x, y, generator, labels) if cfg.augment else (x, y)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless index batches ``[batch_size]``: reshuffled epochs, or with replacement if
    ``n < batch_size``."""
    while True:
        if n < batch_size:
            yield torch.randint(n, (batch_size,), generator=generator, device=generator.device)
            continue
        perm = torch.randperm(n, generator=generator, device=generator.device)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i : i + batch_size]


def validates(step: int, total: int, cfg: TrainConfig) -> bool:
    """Whether training validates after ``step`` (every ``validate_every`` and at the end)."""
    return step % cfg.validate_every == 0 or step == total


def check_finite(loss: torch.Tensor, step: int, cfg: TrainConfig) -> None:
    """Raise :class:`~activeseg.errors.TrainingDiverged` for a non-finite ``loss``."""
    if not torch.isfinite(loss):
        raise TrainingDiverged(
            f"training diverged: loss is {loss.item()} at step {step}; "
            f"lower train.lr (now {cfg.lr})"
        )


@dataclass
class FitResult:
    """What :func:`fit` did: steps run, best validation Dice and where, time in seconds."""

    steps: int
    best_val_dice: float
    best_step: int
    seconds: float
    final_loss: float
    history: list[tuple[int, float, float]] = field(default_factory=list)  # step, loss, val dice


def fit(
    model: nn.Module,
    train: Labelled,
    val: Labelled,
    cfg: TrainConfig,
    runtime: Runtime,
    generator: torch.Generator,
    progress: bool = False,
) -> FitResult:
    """Train ``model`` in place on ``train`` and load the weights of its best (mean
    foreground) Dice on ``val``.

    Any module mapping ``[B, 1, *S]`` to logits ``[B, C, *S]`` trains (the loss follows C);
    its dropout must be :class:`~activeseg.model.MCDropout` (see
    :func:`~activeseg.model.patch_dropout`). Every random draw (order, augmentation, dropout)
    comes from ``generator``, which must live on ``runtime.device``. With ``cfg.patience > 0``
    training stops after that many validations without a better Dice (``FitResult.steps``
    counts the steps run). A non-finite loss raises
    :class:`~activeseg.errors.TrainingDiverged` (a :class:`UserError`); ``model`` is then left
    half-trained and must be discarded.
    """
    if len(train.images) == 0:
        raise UserError("no labelled patches to train on")
    start = time.perf_counter()
    runtime.place(model)
    total = cfg.steps_for(len(train.images))
    optimizer, schedule = make_optimizer(model.parameters(), cfg, total)
    best = BestState([model])
    history: list[tuple[int, float, float]] = []
    batches = training_batches(train, cfg, runtime, generator)
    losses: tuple[nn.Module, nn.Module] | None = None
    loss_value = float("nan")
    stale = 0  # validations since the best one
    step = 0
    bar = progress_bar(total=total, desc="train", leave=False, enabled=progress, unit="step")
    with seeded_dropout(model, generator):
        for step in range(1, total + 1):
            model.train()
            x, y = next(batches)
            with runtime.autocast():
                logits = model(x)
            if losses is None:
                losses = make_loss(cfg.loss, cfg.fg_weight, logits.shape[1])
            loss = losses[0 if step <= total // 2 else 1](logits.float(), y)
            check_finite(loss, step, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_value = float(loss.detach())
            if validates(step, total, cfg):
                dice = evaluate(model, val.images, val.masks, runtime)["dice"]
                history.append((step, loss_value, dice))
                stale = 0 if best.offer(dice, step, [model]) else stale + 1
                bar.set_postfix(loss=f"{loss_value:.3f}", val_dice=f"{dice:.3f}")
            bar.update()
            if cfg.patience and stale >= cfg.patience:
                break
    bar.close()
    best.restore([model])
    return FitResult(step, best.dice, best.step, time.perf_counter() - start, loss_value, history)


@torch.inference_mode()
def predict(
    model: nn.Module, images: torch.Tensor, runtime: Runtime, batch_size: int = 16
) -> torch.Tensor:
    """Deterministic probabilities ``[N, C, *S]`` (float32, on the CPU) in evaluation mode."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = runtime.tensor(images[i : i + batch_size])
        with runtime.autocast():
            logits = model(x)
        out.append(probabilities(logits.float()).cpu())
    model.train(was_training)
    return torch.cat(out)


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    runtime: Runtime,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Metrics of the predicted labels over the whole set and as a per-patch mean; for
    several foreground classes their mean and each class's value (see
    :func:`activeseg.metrics.summarize_classes`)."""
    return summarize_classes(class_confusion_counts(model, images, masks, runtime, threshold))


def class_confusion_counts(
    model: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    runtime: Runtime,
    threshold: float = 0.5,
) -> torch.Tensor:
    """Per-patch, per-foreground-class (tp, fp, tn, fn) counts ``[N, K, 4]`` of the predicted
    labels (:func:`~activeseg.model.predicted_labels`); ``masks`` ``[N, 1, *S]`` hold {0, 1}
    (K = 1, foreground = mask >= 0.5) or labels 0 .. K."""
    return probability_confusion(predict(model, images, runtime), masks, threshold)


def probability_confusion(
    probs: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5
) -> torch.Tensor:
    """Per-patch, per-foreground-class (tp, fp, tn, fn) counts ``[N, K, 4]`` of the labels
    predicted from probabilities ``probs`` ``[N, C, *S]`` against ``masks`` ``[N, 1, *S]``
    (as :func:`class_confusion_counts`)."""
    pred = predicted_labels(probs, threshold)
    target = torch.as_tensor(masks).cpu()[:, 0]
    if probs.shape[1] == 1:
        return confusion(pred == 1, target >= 0.5)[:, None]
    labels = target.long()
    return torch.stack([confusion(pred == k, labels == k) for k in range(1, probs.shape[1])], dim=1)
