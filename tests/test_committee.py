"""Committees: the SVGD kernel gradient (vectorised = explicit loop = finite difference), the
bandwidth (against Liu & Wang's reference formula) and its guards, SVGD without repulsion =
independent training, committee statistics, and on the phantom an SVGD committee as good as
an ensemble but diverse."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pytest
import torch
from conftest import Phantom, make_unet
from torch import nn

from activeseg.committee import (
    committee_dice,
    committee_statistics,
    disagreement,
    fit_members,
    fit_svgd,
    flat_parameters,
    median_bandwidth,
    member_probabilities,
    set_gradients,
    svgd_direction,
)
from activeseg.config import TrainConfig
from activeseg.model import patch_dropout, seeded_dropout, seeded_unet
from activeseg.runtime import Runtime, torch_generator
from activeseg.scoring import entropy
from activeseg.stacked import MemberLoop, StackedUNet, seed_members, stack
from activeseg.train import FitResult, Labelled, fit, predict

T = TypeVar("T")


def particles(m: int = 4, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(m, d, generator=g, dtype=torch.float64),
        torch.randn(m, d, generator=g, dtype=torch.float64),
    )


def rbf(a: torch.Tensor, b: torch.Tensor, h: float) -> torch.Tensor:
    return torch.exp(-(a - b).square().sum() / h)


# --------------------------------------------------------------------------- the kernel


def test_repulsive_term_equals_an_explicit_autograd_loop() -> None:
    x, score = particles()
    step = svgd_direction(x, score)
    m, h = len(x), step.bandwidth
    driving = torch.zeros_like(x)
    repulsive = torch.zeros_like(x)
    for i in range(m):
        for j in range(m):
            xj = x[j].clone().requires_grad_(True)
            k = rbf(xj, x[i], h)
            (grad,) = torch.autograd.grad(k, xj)
            driving[i] += k.detach() * score[j] / m
            repulsive[i] += grad / m
    torch.testing.assert_close(step.driving, driving, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(step.repulsive, repulsive, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(step.phi, driving + repulsive, rtol=1e-12, atol=1e-14)
    assert float(step.repulsive.norm()) > 0.01  # not a comparison of zeros


def test_repulsive_term_equals_a_finite_difference_of_the_kernel() -> None:
    """(1/M) Σ_j ∂k(θ_j, θ_i)/∂θ_j by central differences at the same bandwidth."""
    x, score = particles(m=3, d=4, seed=1)
    step = svgd_direction(x, score)
    h, eps = step.bandwidth, 1e-6
    fd = torch.zeros_like(x)
    for i in range(3):
        for j in range(3):
            for d in range(4):
                up, down = x[j].clone(), x[j].clone()
                up[d] += eps
                down[d] -= eps
                fd[i, d] += (rbf(up, x[i], h) - rbf(down, x[i], h)) / (2 * eps) / 3
    torch.testing.assert_close(step.repulsive, fd, rtol=1e-6, atol=1e-9)


def test_bandwidth_is_the_median_of_the_full_matrix_over_log_m_plus_one() -> None:
    """Points 0, 1, 3 on a line: the 3 x 3 squared distances hold 0, 0, 0, 1, 1, 4, 4, 9, 9
    (diagonal included, as Liu & Wang's median of ``squareform(pdist)**2``) -> median 1;
    h = 1 / log 4, so k(0, 1) = exp(-log 4) = 1/4, k(1, 3) = 4^-4, k(0, 3) = 4^-9."""
    x = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    step = svgd_direction(x, torch.zeros_like(x))
    assert step.bandwidth == pytest.approx(1 / math.log(4))
    expected = torch.tensor(
        [[1, 4**-1, 4**-9], [4**-1, 1, 4**-4], [4**-9, 4**-4, 1]], dtype=torch.float64
    )
    torch.testing.assert_close(step.kernel, expected, rtol=1e-12, atol=0)
    assert step.kernel.dtype == torch.float64
    # repulsive term of particle 0: (2 / h) Σ_j k_0j (x_0 - x_j) / M
    push = 2 * math.log(4) * (4**-1 * (0 - 1) + 4**-9 * (0 - 3)) / 3
    assert float(step.repulsive[0, 0]) == pytest.approx(push, rel=1e-12)


@pytest.mark.parametrize("m", [2, 4, 5])
def test_bandwidth_follows_liu_and_wangs_reference_code(m: int) -> None:
    """Liu & Wang's ``svgd_kernel``: ``h_ref = sqrt(0.5 np.median(squareform(pdist(θ))**2) /
    log(M + 1))`` in ``exp(-d² / h_ref² / 2)`` (an even M² averages the two middle values)."""
    from scipy.spatial.distance import pdist, squareform

    x, score = particles(m=m, d=5, seed=m)
    sq = squareform(pdist(x.numpy())) ** 2
    h_ref = np.sqrt(0.5 * np.median(sq) / np.log(m + 1))
    step = svgd_direction(x, score)
    assert step.bandwidth == pytest.approx(2 * h_ref**2, rel=1e-12)
    np.testing.assert_allclose(step.kernel.numpy(), np.exp(-sq / h_ref**2 / 2), rtol=1e-12)


def test_zero_bandwidth_is_guarded() -> None:
    same = torch.ones(3, 5, dtype=torch.float64)
    step = svgd_direction(same, torch.ones(3, 5, dtype=torch.float64))
    assert step.bandwidth == 1.0
    assert torch.equal(step.repulsive, torch.zeros(3, 5, dtype=torch.float64))
    torch.testing.assert_close(step.driving, torch.ones(3, 5, dtype=torch.float64))
    # three of four identical: squared pair distances 0, 0, 0, 4, 4, 4 have the (lower)
    # median 0; the mean, 2, is used instead
    x = torch.tensor([[0.0], [0.0], [0.0], [2.0]], dtype=torch.float64)
    assert median_bandwidth(torch.cdist(x, x).square()) == pytest.approx(2 / math.log(5))
    one = svgd_direction(torch.zeros(1, 3), torch.ones(1, 3))
    assert one.bandwidth == 1.0 and torch.equal(one.phi, torch.ones(1, 3, dtype=torch.float64))


def test_repulsion_pushes_close_particles_apart() -> None:
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0]], dtype=torch.float64)
    step = svgd_direction(x, torch.zeros_like(x))
    assert step.repulsive[0, 0] < 0 < step.repulsive[1, 0]
    assert step.repulsive[0, 1] == step.repulsive[1, 1] == 0


def test_without_repulsion_each_particle_follows_its_own_gradient() -> None:
    x, score = particles()
    step = svgd_direction(x, score, repulsion=False)
    torch.testing.assert_close(step.phi, score / len(x))
    assert torch.equal(step.repulsive, torch.zeros_like(x))


# --------------------------------------------------------------------------- training


def tiny_cfg(steps: int, validate_every: int | None = None, augment: bool = True) -> TrainConfig:
    return TrainConfig(
        lr=1e-2,
        epochs=steps,
        steps_per_epoch=1,
        batch_size=8,
        validate_every=validate_every or steps,
        augment=augment,
    )


def test_svgd_without_repulsion_is_independent_training(phantom: Phantom, runtime: Runtime) -> None:
    """Two particles without repulsion end where each ends when trained alone (no dropout,
    no augmentation: the shared generator only draws the batches; validated at the end
    only). Adam sees the gradient / M with eps / M: the same steps (to the rounding of the
    stacked sums, see :func:`relative_distance`)."""
    p = phantom
    data = (
        Labelled(p.images[p.train], p.masks[p.train]),
        Labelled(p.images[p.val], p.masks[p.val]),
    )
    cfg = tiny_cfg(12, augment=False)
    pair = [make_unet(seed=s, dropout=0.0) for s in (1, 2)]
    alone = [copy.deepcopy(m) for m in pair]
    fit_svgd(pair, *data, cfg, runtime, torch_generator(5), repulsion=False)
    for model in alone:
        fit_svgd([model], *data, cfg, runtime, torch_generator(5), repulsion=False)
    starts = [make_unet(seed=s, dropout=0.0) for s in (1, 2)]
    again = [copy.deepcopy(m) for m in starts]
    for model in again:  # alone with another number of threads: the rounding floor
        with_threads(
            torch.get_num_threads() + 1,
            lambda m=model: fit_svgd([m], *data, cfg, runtime, torch_generator(5), repulsion=False),
        )
    floor = max(relative_distance(a, b, s) for a, b, s in zip(again, alone, starts, strict=True))
    for joint, single, start in zip(pair, alone, starts, strict=True):
        assert relative_distance(joint, single, start) <= floor + 0.05
    moved = (flat_parameters(pair[0]) - flat_parameters(make_unet(seed=1, dropout=0.0))).abs()
    assert float(moved.max()) > 0.05  # training did move the weights
    repelled = [make_unet(seed=s, dropout=0.0) for s in (1, 2)]
    fit_svgd(repelled, *data, cfg, runtime, torch_generator(5))
    assert float((flat_parameters(repelled[0]) - flat_parameters(pair[0])).abs().max()) > 1e-3


def test_svgd_logs_the_norms_of_both_terms(phantom: Phantom, runtime: Runtime) -> None:
    p = phantom
    models = [make_unet(seed=s) for s in range(3)]
    result = fit_svgd(
        models,
        Labelled(p.images[p.train], p.masks[p.train]),
        Labelled(p.images[p.val], p.masks[p.val]),
        tiny_cfg(6, validate_every=3),
        runtime,
        torch_generator(0),
    )
    assert [h["step"] for h in result.history] == [3, 6]
    for h in result.history:
        assert h["driving"] > 0 and h["repulsive"] > 0 and h["bandwidth"] > 0
    assert result.best_val_dice == max(h["val_dice"] for h in result.history)


def test_committee_statistics_are_the_moments_of_the_members(
    phantom: Phantom, runtime: Runtime
) -> None:
    models = [make_unet(seed=s) for s in range(3)]
    images = phantom.images[phantom.test[:5]]
    stats = committee_statistics(models, images, runtime, batch=2)
    probs = torch.stack([predict(m, images, runtime) for m in models]).double()
    assert stats.samples == 3
    torch.testing.assert_close(stats.mean, probs.mean(0).float())
    torch.testing.assert_close(stats.std, probs.std(0, correction=0).float())
    expected = torch.stack([entropy(q) for q in probs]).mean(0).float()
    assert stats.expected_entropy is not None
    torch.testing.assert_close(stats.expected_entropy, expected)
    same = committee_statistics([models[0]] * 3, images, runtime)
    assert torch.equal(same.std, torch.zeros_like(same.std))
    assert same.expected_entropy is not None
    torch.testing.assert_close(same.expected_entropy, entropy(same.mean), atol=1e-6, rtol=0)


def test_svgd_committee_reaches_the_ensemble_dice_and_its_members_differ(
    phantom: Phantom, runtime: Runtime
) -> None:
    """Measured (seeds as here, 2026-11-22): ensemble of 3 test Dice 0.9810, SVGD 0.9831; the
    SVGD members' thresholded predictions differ on 2.15 % of the test pixels."""
    p = phantom
    data = (
        Labelled(p.images[p.train], p.masks[p.train]),
        Labelled(p.images[p.val], p.masks[p.val]),
    )
    cfg = tiny_cfg(80, validate_every=20)
    ensemble = [make_unet(seed=s) for s in range(3)]
    for s, model in enumerate(ensemble):
        fit(model, *data, cfg, runtime, torch_generator(10 + s))
    svgd = [make_unet(seed=s) for s in range(3)]
    fit_svgd(svgd, *data, cfg, runtime, torch_generator(10))
    test = (p.images[p.test], p.masks[p.test])
    ensemble_dice = committee_dice(ensemble, *test, runtime)
    svgd_dice = committee_dice(svgd, *test, runtime)
    spread = disagreement(member_probabilities(svgd, p.images[p.test], runtime))
    print(f"ensemble {ensemble_dice:.4f} svgd {svgd_dice:.4f} disagreement {spread:.4f}")
    assert ensemble_dice > 0.8
    assert svgd_dice >= ensemble_dice - 0.02
    assert spread > 0.005


def test_gradients_are_written_in_each_parameters_memory_layout() -> None:
    """Fused Adam reads a grad in its parameter's layout: a contiguous grad of a
    channels-last weight trained the SVGD committee on scrambled gradients (test Dice 0.93
    instead of 0.98 in the committee test above)."""
    model = make_unet(seed=0).to(memory_format=torch.channels_last)
    flat = torch.arange(float(flat_parameters(model).numel()), dtype=torch.float64)
    set_gradients(model, flat)
    offset = 0
    for p in model.parameters():
        assert p.grad is not None and p.grad.stride() == p.stride()
        expected = flat[offset : offset + p.numel()].view_as(p).float()
        torch.testing.assert_close(p.grad, expected)
        offset += p.numel()
    assert any(p.ndim == 4 and not p.is_contiguous() for p in model.parameters())


# --------------------------------------------------------------------- stacked training


def _ensemble_alone_and_stacked(
    phantom: Phantom,
    runtime: Runtime,
    make: Callable[[int], nn.Module],
    cfg: TrainConfig,
    grouped: bool = False,
) -> tuple[list[nn.Module], list[FitResult], list[nn.Module], list[FitResult]]:
    p = phantom
    train = Labelled(p.images[p.train], p.masks[p.train])
    val = Labelled(p.images[p.val], p.masks[p.val])
    alone = [make(s) for s in range(3)]
    separate = [
        fit(m, train, val, cfg, runtime, torch_generator(20 + s)) for s, m in enumerate(alone)
    ]
    joint = [make(s) for s in range(3)]
    generators = [torch_generator(20 + s) for s in range(3)]
    stacked, _ = fit_members(joint, train, val, cfg, runtime, generators, grouped=grouped)
    return alone, separate, joint, stacked


def relative_distance(a: nn.Module, b: nn.Module, start: nn.Module) -> float:
    """``‖θ_a - θ_b‖ / ‖θ_b - θ_start‖``: how far two trainings of one network end apart,
    relative to how far training moved it. Adam turns the rounding of near-zero gradients
    into whole steps, so two fp32 trainings that sum in different orders drift apart by a
    few percent of the distance travelled; a wrong batch, mask or gradient moves them apart
    by about as much as training moved them."""
    theirs = flat_parameters(b)
    return float((flat_parameters(a) - theirs).norm() / (theirs - flat_parameters(start)).norm())


def with_threads(n: int, fn: Callable[[], T]) -> T:
    """``fn()`` with ``n`` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("grouped", [False, True])
def test_a_stacked_ensemble_trains_each_member_as_it_would_alone(
    phantom: Phantom, runtime: Runtime, grouped: bool
) -> None:
    """Grouped convolutions, per-member batches, augmentation, dropout masks, Adam state,
    best-Dice choice and early stop: each member of the stacked ensemble trains as it does
    alone with its generator (fp32). After one step the weights agree to rounding; after
    twelve they are no further apart than two trainings alone that differ only in the
    number of threads (measured: stacked 0-0.14, threads 0.12-0.39 of the distance
    travelled; see :func:`relative_distance`)."""
    alone, _, joint, _ = _ensemble_alone_and_stacked(
        phantom, runtime, lambda s: make_unet(seed=s), tiny_cfg(1), grouped
    )
    for single, member in zip(alone, joint, strict=True):
        torch.testing.assert_close(
            flat_parameters(member), flat_parameters(single), rtol=0, atol=2e-4
        )
    cfg = dataclasses.replace(tiny_cfg(12, validate_every=2), patience=1)
    alone, separate, joint, stacked = _ensemble_alone_and_stacked(
        phantom, runtime, lambda s: make_unet(seed=s), cfg, grouped
    )
    assert isinstance(stack(joint, grouped), StackedUNet if grouped else MemberLoop)
    other = with_threads(
        torch.get_num_threads() + 1,  # another summation order, the same training
        lambda: _ensemble_alone_and_stacked(phantom, runtime, lambda s: make_unet(seed=s), cfg)[0],
    )
    starts = [make_unet(seed=s) for s in range(len(alone))]
    floor = max(relative_distance(o, a, s) for o, a, s in zip(other, alone, starts, strict=True))
    for single, member, start, r_alone, r_joint in zip(
        alone, joint, starts, separate, stacked, strict=True
    ):
        assert relative_distance(member, single, start) <= floor + 0.05
        assert r_joint.best_val_dice == pytest.approx(r_alone.best_val_dice, abs=0.05)
        assert r_joint.steps <= 12
    assert any(r.steps < 12 for r in stacked)  # the early stop was exercised


def test_any_network_trains_stacked_as_a_loop_over_its_members(
    phantom: Phantom, runtime: Runtime
) -> None:
    """A network of the user's own (not the built-in U-Net) takes the member loop, with the
    same per-member streams and results as training alone."""

    def make(seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = nn.Sequential(
                nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.2), nn.Conv2d(4, 1, 1)
            )
        return patch_dropout(net)

    alone, separate, joint, stacked = _ensemble_alone_and_stacked(
        phantom, runtime, make, tiny_cfg(6, validate_every=3)
    )
    assert isinstance(stack(joint), MemberLoop)
    for single, member, r_alone, r_joint in zip(alone, joint, separate, stacked, strict=True):
        assert r_joint.best_step == r_alone.best_step
        torch.testing.assert_close(flat_parameters(member), flat_parameters(single))


@pytest.mark.parametrize("train_mode", [False, True])
def test_a_stacked_3d_multiclass_unet_computes_each_members_logits(train_mode: bool) -> None:
    """Channel-agnostic and dimension-agnostic: three-class 3D members stacked give each
    member's logits, in training mode with each member's own dropout masks."""
    members = [seeded_unet(s, 3, 4, 0.2, out_channels=3, spatial_dims=3) for s in range(2)]
    net = stack(members, grouped=True)
    assert isinstance(net, StackedUNet)
    net.train(train_mode)
    x = torch.randn(2, 2, 16, 16, 16)
    seed_members(net, [torch_generator(s) for s in range(2)])
    outputs = []
    for s, member in enumerate(members):
        member.train(train_mode)
        with seeded_dropout(member, torch_generator(s)):
            outputs.append(member(x[:, s : s + 1]))
    torch.testing.assert_close(net(x), torch.cat(outputs, 1), atol=1e-5, rtol=1e-4)
