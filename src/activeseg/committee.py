"""Committees of U-Nets: an independent ensemble, and particles trained jointly by Stein
variational gradient descent (SVGD; Nath et al., IEEE TMI 2021).

A committee's members play the role of MC samples: :func:`committee_statistics` feeds their
deterministic probabilities to the same :class:`~activeseg.scoring.Moments` as MC dropout, so
every strategy scores MC and committee statistics alike.

SVGD (Liu & Wang, 2016) moves the ``M`` particles ``θ_i`` (flattened trainable parameters;
BatchNorm running statistics are buffers, not particles' coordinates) along

    φ(θ_i) = (1/M) Σ_j [ k(θ_j, θ_i) ∇_{θ_j} log p(θ_j) + ∇_{θ_j} k(θ_j, θ_i) ]

with the RBF kernel ``k(a, b) = exp(-‖a - b‖² / h)``. The first sum (*driving*) pulls each
particle up the kernel-weighted log-likelihood of its neighbours; the second (*repulsive*,
``(2/h) Σ_j k_ji (θ_i - θ_j) / M``) pushes particles apart. Bandwidth (the median heuristic of
Liu & Wang's code): ``h = med / log(M + 1)``, ``med`` the median of the squared distances
``‖θ_i - θ_j‖²`` over pairs ``i < j``; if ``med`` is 0 (or there is no pair), the mean squared
distance is used, and if that is 0 too, ``h = 1`` (all distances are then 0 and the kernel is
1 for any ``h``). Distances and the kernel are computed in float64. The log-likelihood is
Nath et al.'s "Dice log-likelihood" ``log p(θ) = -log(DiceLoss(θ) + ε)`` on the training batch
(no prior). Each particle has its own Adam (:func:`activeseg.train.make_optimizer`, as
every training); ``-φ(θ_i)`` is written into its ``.grad`` so that Adam *ascends* ``φ``.
Particles run forward/backward one after another on the same batch, so memory is that of
one network plus the ``[M, D]`` parameter and gradient matrices.

With ``repulsion=False`` the kernel is replaced by the identity (``k_ij = δ_ij``, no
repulsive term): each particle follows ``(1/M) ∇ log p(θ_i)`` alone, which is independent
training. Adam is invariant to the ``1/M`` scale except through its ``eps``, so the particles'
Adam uses ``eps / M``: then the steps are exactly those of training each particle alone
(measured: with torch's ``eps`` unscaled, 12 steps already moved weights apart by 0.08).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from activeseg.config import TrainConfig
from activeseg.metrics import confusion, summarize
from activeseg.model import seeded_dropout
from activeseg.runtime import Runtime
from activeseg.scoring import McStats, Moments, concat
from activeseg.train import (
    ADAM_EPS,
    BestState,
    Labelled,
    check_finite,
    make_loss,
    make_optimizer,
    predict,
    training_batches,
    validates,
)


@torch.inference_mode()
def committee_statistics(
    models: Sequence[nn.Module], images: torch.Tensor, runtime: Runtime, batch: int = 16
) -> McStats:
    """Statistics over the members' deterministic probabilities of ``images`` ``[N, 1, *S]``:
    mean and std ``[N, C, *S]``, expected entropy ``[N, *S]``, ``samples = M``."""
    parts = []
    for start in range(0, len(images), batch):
        moments = Moments()
        for model in models:
            moments.add(predict(model, images[start : start + batch], runtime, batch)[None])
        parts.append(moments.stats())
    return concat(parts)


def member_probabilities(
    models: Sequence[nn.Module], images: torch.Tensor, runtime: Runtime
) -> torch.Tensor:
    """Every member's probabilities ``[M, N, C, *S]`` (float32, CPU)."""
    return torch.stack([predict(m, images, runtime) for m in models])


def disagreement(member_probs: torch.Tensor, threshold: float = 0.5) -> float:
    """Fraction of pixels where the members' thresholded predictions are not all equal
    (``member_probs`` ``[M, N, 1, *S]``)."""
    pred = member_probs >= threshold
    return float((pred.any(0) & ~pred.all(0)).double().mean())


def committee_dice(
    models: Sequence[nn.Module], images: torch.Tensor, masks: torch.Tensor, runtime: Runtime
) -> float:
    """Dice (whole set) of the thresholded committee-mean probability."""
    mean = member_probabilities(models, images, runtime).mean(0)
    return summarize(confusion(mean >= 0.5, masks >= 0.5))["dice"]


# ---------------------------------------------------------------------------- the kernel


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """The trainable parameters of ``model`` as one float64 vector ``[D]`` (no buffers)."""
    return torch.cat(
        [p.detach().reshape(-1) for p in model.parameters() if p.requires_grad]
    ).double()


def flat_gradients(model: nn.Module) -> torch.Tensor:
    """``.grad`` of the trainable parameters as one float64 vector ``[D]`` (0 where none)."""
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
            for p in model.parameters()
            if p.requires_grad
        ]
    ).double()


def set_gradients(model: nn.Module, flat: torch.Tensor) -> None:
    """Write ``flat`` ``[D]`` into the ``.grad`` of the trainable parameters (in order), each
    in its parameter's memory layout (fused optimizers read grads in the parameter's layout:
    a contiguous grad of a channels-last weight scrambled the SVGD updates)."""
    offset = 0
    for p in model.parameters():
        if p.requires_grad:
            n = p.numel()
            p.grad = torch.empty_like(p).copy_(flat[offset : offset + n].view_as(p))
            offset += n


def median_bandwidth(sq_dists: torch.Tensor) -> float:
    """``h = med / log(M + 1)`` of the squared pairwise distances ``[M, M]`` (``med``: the
    lower median for an even number of pairs; see the module docstring for the zero
    guards)."""
    m = sq_dists.shape[0]
    pairs = sq_dists[torch.triu_indices(m, m, 1).unbind()]
    med = float(pairs.median()) if len(pairs) else 0.0
    if not med > 0.0:  # also catches NaN
        med = float(pairs.mean()) if len(pairs) else 0.0
    if not med > 0.0:
        return 1.0
    return med / math.log(m + 1)


@dataclass(frozen=True)
class SvgdStep:
    """One SVGD direction: ``phi`` ``[M, D]`` = ``driving`` + ``repulsive`` (float64),
    the ``bandwidth`` ``h`` and the kernel ``[M, M]``."""

    phi: torch.Tensor
    driving: torch.Tensor
    repulsive: torch.Tensor
    bandwidth: float
    kernel: torch.Tensor


def svgd_direction(x: torch.Tensor, score: torch.Tensor, repulsion: bool = True) -> SvgdStep:
    """φ for particles ``x`` ``[M, D]`` with log-density gradients ``score`` ``[M, D]``
    (both converted to float64), vectorised over particles."""
    x, score = x.double(), score.double()
    m = x.shape[0]
    sq = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist").square()
    h = median_bandwidth(sq)
    if not repulsion:
        kernel = torch.eye(m, dtype=torch.float64)
        driving = score / m
        return SvgdStep(driving, driving, torch.zeros_like(x), h, kernel)
    kernel = torch.exp(-sq / h)  # symmetric: kernel[j, i] = k(θ_j, θ_i)
    driving = kernel @ score / m
    repulsive = (2.0 / h) * (kernel.sum(1, keepdim=True) * x - kernel @ x) / m
    return SvgdStep(driving + repulsive, driving, repulsive, h, kernel)


# ---------------------------------------------------------------------------- training


@dataclass
class SvgdResult:
    """What :func:`fit_svgd` did; ``history`` holds at every validation ``step``, the mean
    ``loss`` over particles, the committee ``val_dice``, the norms of the ``driving`` and
    ``repulsive`` terms of that step (Frobenius over all particles) and the ``bandwidth``."""

    steps: int
    best_val_dice: float
    best_step: int
    seconds: float
    final_loss: float
    history: list[dict[str, float]] = field(default_factory=list)


def fit_svgd(
    models: Sequence[nn.Module],
    train: Labelled,
    val: Labelled,
    cfg: TrainConfig,
    runtime: Runtime,
    generator: torch.Generator,
    epsilon: float = 1e-3,
    repulsion: bool = True,
    progress: bool = False,
) -> SvgdResult:
    """Train the particles ``models`` in place by SVGD on ``train`` for ``cfg.steps`` steps
    (batches, augmentation and dropout as in :func:`activeseg.train.fit`, one batch shared
    by all particles) and load the particles of the best committee Dice on ``val``.
    ``cfg.loss`` is not used: the likelihood is the Dice log-likelihood
    ``-log(DiceLoss + epsilon)``."""
    start = time.perf_counter()
    for model in models:
        runtime.place(model)
    eps = ADAM_EPS / len(models)  # Adam on φ = ∇ log p / M behaves as Adam on ∇ log p
    optimizers = [make_optimizer(m.parameters(), cfg, eps) for m in models]
    batches = training_batches(train, cfg, runtime, generator)
    best = BestState(models)
    history: list[dict[str, float]] = []
    loss_value = math.nan
    bar = tqdm(total=cfg.steps, desc="svgd", leave=False, disable=not progress, unit="step")
    for step in range(1, cfg.steps + 1):
        x, y = next(batches)
        params, scores, losses = [], [], []
        dice_loss: nn.Module | None = None
        for model in models:  # one particle at a time bounds memory
            model.train()
            model.zero_grad(set_to_none=True)
            with seeded_dropout(model, generator), runtime.autocast():
                logits = model(x)
            dice_loss = dice_loss or make_loss("dice", cfg.fg_weight, logits.shape[1])[0]
            loss = dice_loss(logits.float(), y)
            check_finite(loss, step, cfg)
            log_likelihood = -torch.log(loss + epsilon)
            log_likelihood.backward()
            params.append(flat_parameters(model))
            scores.append(flat_gradients(model))
            losses.append(float(loss.detach()))
        direction = svgd_direction(torch.stack(params), torch.stack(scores), repulsion)
        for model, (optimizer, schedule), phi in zip(
            models, optimizers, direction.phi, strict=True
        ):
            set_gradients(model, -phi)
            optimizer.step()
            schedule.step()
        loss_value = sum(losses) / len(losses)
        if validates(step, cfg.steps, cfg):
            dice = committee_dice(models, *val, runtime)
            history.append(
                {
                    "step": step,
                    "loss": loss_value,
                    "val_dice": dice,
                    "driving": float(direction.driving.norm()),
                    "repulsive": float(direction.repulsive.norm()),
                    "bandwidth": direction.bandwidth,
                }
            )
            best.offer(dice, step, models)
            bar.set_postfix(loss=f"{loss_value:.3f}", val_dice=f"{dice:.3f}")
        bar.update()
    bar.close()
    best.restore(models)
    return SvgdResult(
        cfg.steps, best.dice, best.step, time.perf_counter() - start, loss_value, history
    )
