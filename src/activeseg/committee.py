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
``(2/h) Σ_j k_ji (θ_i - θ_j) / M``) pushes particles apart. Bandwidth, the median heuristic
as Liu & Wang's reference code computes it (``python/svgd.py`` of
github.com/dilinwang820/Stein-Variational-Gradient-Descent: ``np.median`` of
``squareform(pdist(theta))**2``, then ``h_ref = sqrt(0.5 med / log(M + 1))`` in
``exp(-d² / (2 h_ref²))``, i.e. ``h = 2 h_ref²``): ``h = med / log(M + 1)``, ``med`` the
median (the mean of the two middle values for an even count, as ``np.median``) of the full
``M × M`` matrix of squared distances ``‖θ_i - θ_j‖²``, its zero diagonal included. Our
guards, not in the reference: if ``med`` is 0, the mean squared distance over the pairs
``i < j`` is used, and if that is 0 too (or there is no pair), ``h = 1`` (all distances are
then 0 and the kernel is 1 for any ``h``). Distances and the kernel are computed in float64.
The log-likelihood is Nath et al.'s "Dice log-likelihood" ``log p(θ) = -log(DiceLoss(θ) +
ε)`` on the training batch (no prior), with the Dice of
:func:`activeseg.train.make_loss` ``("dice", ..., C)``: sigmoid for one channel, for ``C``
softmax channels MONAI's multi-class Dice (one-hot targets, background excluded, over the
batch). Each particle has its own Adam (:func:`activeseg.train.make_optimizer`, as every
training); ``-φ(θ_i)`` is written into its ``.grad`` so that Adam *ascends* ``φ``.

Committees work for any number of classes: members output one sigmoid channel (binary) or
``C`` softmax channels; the committee's prediction is the members' mean probability,
labelled as a single network's (threshold, or arg-max over ``C`` channels), and its Dice is
the mean foreground Dice of :func:`activeseg.metrics.summarize_classes`.

Ensemble members and SVGD particles train the same way, :func:`fit_members`: the M networks
as one :class:`~activeseg.stacked.Stack` (one loop, one optimiser step for all members),
each member with its own weights, Adam state, batches, augmentation and dropout masks. SVGD
works on the stacked parameters directly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from activeseg.config import TrainConfig
from activeseg.console import progress_bar
from activeseg.errors import UserError
from activeseg.metrics import summarize_classes
from activeseg.model import predicted_labels, probabilities
from activeseg.runtime import Runtime, derive_seed
from activeseg.scoring import McStats, Moments, concat
from activeseg.stacked import (
    Stack,
    member_coordinates,
    seed_members,
    set_member_gradients,
    stack,
)
from activeseg.train import (
    ADAM_EPS,
    BestState,
    FitResult,
    Labelled,
    check_finite,
    make_loss,
    make_optimizer,
    predict,
    probability_confusion,
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
    """Fraction of pixels where the members' predicted labels
    (:func:`~activeseg.model.predicted_labels`: ``p >= threshold`` for one channel, else the
    arg-max class) are not all equal; ``member_probs`` ``[M, N, C, *S]``."""
    labels = predicted_labels(member_probs.flatten(0, 1), threshold)
    labels = labels.unflatten(0, member_probs.shape[:2])  # [M, N, *S]
    return float((labels != labels[:1]).any(0).double().mean())


def committee_dice(
    models: Sequence[nn.Module],
    images: torch.Tensor,
    masks: torch.Tensor,
    runtime: Runtime,
    threshold: float = 0.5,
) -> float:
    """Dice (whole set; mean over foreground classes) of the labels predicted from the
    committee-mean probability of ``images`` ``[N, 1, *S]`` against ``masks`` ``[N, 1, *S]``
    ({0, 1}, or labels 0 .. C-1)."""
    mean = member_probabilities(models, images, runtime).mean(0)
    return summarize_classes(probability_confusion(mean, masks, threshold))["dice"]


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
    """``h = med / log(M + 1)`` of the squared distances ``[M, M]``: ``med`` the median of all
    ``M²`` entries, the zero diagonal included (as Liu & Wang's ``np.median`` of
    ``squareform(pdist)**2``; see the module docstring for the zero guards)."""
    m = sq_dists.shape[0]
    med = float(torch.quantile(sq_dists.double().reshape(-1), 0.5)) if m else 0.0
    if not med > 0.0:  # also catches NaN
        pairs = sq_dists[torch.triu_indices(m, m, 1).unbind()]
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


@dataclass(frozen=True)
class Svgd:
    """SVGD's options: ``epsilon`` of the Dice log-likelihood, and whether particles repel."""

    epsilon: float = 1e-3
    repulsion: bool = True


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


@torch.inference_mode()
def stacked_probabilities(
    net: Stack, images: torch.Tensor, runtime: Runtime, batch: int = 16
) -> torch.Tensor:
    """Every member's deterministic probabilities ``[M, N, C, *S]`` (float32, CPU) of
    ``images`` ``[N, 1, *S]``, all members in one pass per ``batch // M`` images."""
    net.eval()
    step, parts = max(1, batch // net.members), []
    for i in range(0, len(images), step):
        x = images[i : i + step]
        x = runtime.tensor(x.repeat(1, net.members, *[1] * (x.ndim - 2)))
        with runtime.autocast():
            logits = net(x).float().unflatten(1, (net.members, -1)).movedim(1, 0)
        parts.append(probabilities(logits.flatten(0, 1)).unflatten(0, (net.members, -1)).cpu())
    return torch.cat(parts, 1)


def fit_members(
    models: Sequence[nn.Module],
    train: Labelled,
    val: Labelled,
    cfg: TrainConfig,
    runtime: Runtime,
    generators: Sequence[torch.Generator],
    svgd: Svgd | None = None,
    progress: bool = False,
    grouped: bool = False,
) -> tuple[list[FitResult], list[dict[str, float]]]:
    """Train the ``M`` members ``models`` in place as one :class:`~activeseg.stacked.Stack`
    (the members in turn; with ``grouped`` built-in U-Nets as one grouped network) and load
    their best weights.

    Ensemble (``svgd`` ``None``): member ``m`` trains exactly as :func:`activeseg.train.fit`
    with ``generators[m]`` would (its batches, augmentation and dropout masks, its Adam state
    and best validation Dice, its ``cfg.patience``); the stacked arithmetic only sums in
    another order. SVGD: ``generators[0]`` draws the batches that all particles share,
    particle ``m``'s dropout masks come from a generator seeded by one draw of it and ``m``;
    the gradients of the Dice log-likelihoods become the SVGD directions
    (:func:`svgd_direction` on the stacked parameters) and the committee's Dice on ``val``
    chooses the weights kept. Returns each member's :class:`~activeseg.train.FitResult`
    (SVGD: the committee's best) and the SVGD history (see :class:`SvgdResult`).
    """
    if len(train.images) == 0:
        raise UserError("no labelled patches to train on")
    start, m_count = time.perf_counter(), len(models)
    if len(generators) != (1 if svgd else m_count):
        raise ValueError(f"{len(generators)} generators for {m_count} members")
    for model in models:
        runtime.place(model)
    net = stack(models, grouped)
    runtime.place(net)
    streams = [training_batches(train, cfg, runtime, g) for g in generators]
    if svgd is None:
        seed_members(net, generators)
    else:
        g = generators[0]
        base = int(torch.randint(2**62, (1,), generator=g, device=g.device))
        seed_members(net, [runtime.generator(derive_seed(base, m)) for m in range(m_count)])
    total = cfg.steps_for(len(train.images))
    optimizer, schedule = make_optimizer(
        net.parameters(), cfg, total, ADAM_EPS / m_count if svgd else ADAM_EPS
    )  # SVGD: Adam on φ = ∇ log p / M behaves as Adam on ∇ log p
    track = _Tracker(models, net, cfg, committee=svgd is not None)
    history: list[dict[str, float]] = []
    losses: tuple[nn.Module, nn.Module] | None = None
    bar = progress_bar(total=total, desc="committee", leave=False, enabled=progress, unit="step")
    for step in range(1, total + 1):
        net.train()
        batches = [next(s) for s in streams] * (m_count if svgd else 1)
        x = torch.cat([b[0] for b in batches], 1)
        with runtime.autocast():
            logits = net(x.contiguous(memory_format=runtime.memory_format_for(x.ndim)))
        per_member = logits.float().unflatten(1, (m_count, -1))
        if losses is None:
            losses = make_loss("dice" if svgd else cfg.loss, cfg.fg_weight, per_member.shape[2])
        loss_fn = losses[0 if step <= total // 2 else 1]
        member_loss = torch.stack([loss_fn(per_member[:, m], b[1]) for m, b in enumerate(batches)])
        check_finite(member_loss.sum(), step, cfg)
        optimizer.zero_grad(set_to_none=True)
        if svgd is None:
            member_loss.sum().backward()
        else:
            torch.log(member_loss + svgd.epsilon).neg().sum().backward()
            direction = svgd_direction(
                member_coordinates(net), member_coordinates(net, grads=True), svgd.repulsion
            )
            set_member_gradients(net, -direction.phi)
        optimizer.step()
        schedule.step()
        track.losses = member_loss.detach().tolist()
        mean_loss = sum(track.losses) / m_count
        if validates(step, total, cfg):
            dice = track.validate(step, stacked_probabilities(net, val.images, runtime), val.masks)
            if svgd is not None:
                history.append(
                    {
                        "step": step,
                        "loss": mean_loss,
                        "val_dice": dice,
                        "driving": float(direction.driving.norm()),
                        "repulsive": float(direction.repulsive.norm()),
                        "bandwidth": direction.bandwidth,
                    }
                )
            bar.set_postfix(loss=f"{mean_loss:.3f}", val_dice=f"{dice:.3f}")
        bar.update()
        if track.done():
            break
    bar.close()
    return track.results(time.perf_counter() - start), history


class _Tracker:
    """The best validation Dice of each member (or of the committee) and its weights, and
    each member's early stop (``cfg.patience``: a stopped member's result is frozen)."""

    def __init__(
        self, models: Sequence[nn.Module], net: Stack, cfg: TrainConfig, committee: bool
    ) -> None:
        self.models, self.net, self.cfg, self.committee = models, net, cfg, committee
        groups = [list(models)] if committee else [[m] for m in models]
        self.best = [BestState(group) for group in groups]
        self.stale = [0] * len(groups)
        self.stopped: list[int | None] = [None] * len(groups)
        self.losses = [math.nan] * len(models)
        self.final = list(self.losses)
        self.step = 0

    def validate(self, step: int, probs: torch.Tensor, masks: torch.Tensor) -> float:
        """Offer the members' weights at ``step`` given their validation probabilities
        ``[M, N, C, *S]``; the committee's Dice (or the members' mean Dice)."""
        self.step = step
        if self.committee:
            dices = [summarize_classes(probability_confusion(probs.mean(0), masks))["dice"]]
        else:
            dices = [summarize_classes(probability_confusion(p, masks))["dice"] for p in probs]
        for g, (best, dice) in enumerate(zip(self.best, dices, strict=True)):
            if self.stopped[g] is not None:
                continue
            members = range(len(self.models)) if self.committee else [g]
            if dice > best.dice:
                for m in members:
                    self.net.store_member(m, self.models[m])
            improved = best.offer(dice, step, [self.models[m] for m in members])
            self.stale[g] = 0 if improved else self.stale[g] + 1
            for m in members:
                self.final[m] = self.losses[m]
            if self.cfg.patience and self.stale[g] >= self.cfg.patience:
                self.stopped[g] = step
        return float(sum(dices) / len(dices))

    def done(self) -> bool:
        return all(s is not None for s in self.stopped)

    def results(self, seconds: float) -> list[FitResult]:
        """Restore every member's best weights; one :class:`FitResult` per member."""
        out = []
        if self.committee:
            self.best[0].restore(self.models)
        for m in range(len(self.models)):
            g = 0 if self.committee else m
            if not self.committee:
                self.best[g].restore([self.models[m]])
            steps = self.stopped[g] or self.step
            out.append(
                FitResult(steps, self.best[g].dice, self.best[g].step, seconds, self.final[m])
            )
        return out


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
    """Train the particles ``models`` in place by SVGD on ``train`` for ``cfg.steps_for(N)`` steps
    (:func:`fit_members`: one batch shared by all particles) and load the particles of the
    best committee Dice on ``val``. ``cfg.loss`` is not used: the likelihood is the Dice
    log-likelihood ``-log(DiceLoss + epsilon)``."""
    results, history = fit_members(
        models, train, val, cfg, runtime, [generator], Svgd(epsilon, repulsion), progress
    )
    first = results[0]
    final = sum(r.final_loss for r in results) / len(results)
    return SvgdResult(
        first.steps, first.best_val_dice, first.best_step, first.seconds, final, history
    )
