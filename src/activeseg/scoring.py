"""Monte-Carlo dropout statistics of a pool of patches, streamed over the samples.

For each patch, ``T`` stochastic passes run with dropout on and BatchNorm frozen
(:func:`activeseg.model.mc_dropout`), for any network whose dropout is
:class:`~activeseg.model.MCDropout`. For the built-in U-Net (the fast path) what does not
depend on the dropout masks (the first level, its max-pool and the skip half of the top
decoder convolution, :meth:`activeseg.model.UNet.stem_cache`) is computed once per patch
and reused for all samples; any other network runs whole passes. Samples run ``mc_batch``
at a time and only a running sum and sum of squares (float64) are kept, so memory does not
grow with ``T``. Small patches share a forward pass (up to :data:`PASS_PIXELS` pixels of
samples and :data:`PASS_PATCHES` patches): the per-call cost of a network's layers then
amortises over several patches.

Every patch draws its dropout masks from its own generator seeded by ``(seed, patch id)``,
also when it shares a pass (:class:`~activeseg.model.MCDropout` with one generator per
patch), and every pass holds the same number of patches (the last one padded with copies
of its last patch, whose statistics are dropped): the convolution algorithms, which a
library may choose by batch size, are the same for every pass, so a patch's statistics are
bit for bit the same whichever patches share its pass, in whatever order, and however a
pool is split into calls, chunks or shards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from activeseg.console import progress_bar
from activeseg.errors import UserError
from activeseg.model import UNet, dropout_modules, mc_dropout, probabilities
from activeseg.runtime import Runtime, derive_seed, torch_generator

SAMPLE_AXIS = 0  # the MC-sample axis of a per-patch batch of stochastic outputs
# Patches share an MC forward pass up to this many pixels (voxels) of samples and at most
# PASS_PATCHES of them: 1.7x faster scoring of 64^2 patches (cpu preset, T = 20, mc_batch
# 10: 6 patches per pass); twice the pixels made passes of the paper network on 128^2
# patches 10 % slower (benchmarks/README.md).
PASS_PIXELS = 2**18
PASS_PATCHES = 8


def class_probabilities(p: torch.Tensor) -> torch.Tensor:
    """Model probabilities ``[B, C, *S]`` -> class probabilities along dim 1: for ``C = 1``
    (sigmoid foreground probability) the two classes ``[1 - p, p]`` ``[B, 2, *S]``; for
    ``C > 1`` (softmax probabilities) unchanged."""
    return torch.cat([1.0 - p, p], dim=1) if p.shape[1] == 1 else p


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Predictive entropy (nats) over the classes of model probabilities ``[B, C, *S]`` ->
    ``[B, *S]`` (``0 log 0 = 0``; see :func:`class_probabilities`)."""
    q = class_probabilities(p)
    return -torch.special.xlogy(q, q).sum(1)


@dataclass(frozen=True)
class McStats:
    """Per-pixel statistics over ``T`` MC samples (or committee members), float32 on the CPU.

    ``mean``: mean probability ``[N, C, *S]``; ``std``: standard deviation over the samples
    (population, ``ddof = 0``) ``[N, C, *S]``; ``samples``: ``T``; ``expected_entropy``: the
    mean over the samples of each sample's predictive entropy :func:`entropy` ``[N, *S]``
    (nats; BALD's second term), ``None`` only for hand-made statistics.
    """

    mean: torch.Tensor
    std: torch.Tensor
    samples: int
    expected_entropy: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.mean.shape[0]

    def first(self, n: int) -> McStats:
        """The statistics of the first ``n`` patches."""
        entropy = None if self.expected_entropy is None else self.expected_entropy[:n]
        return McStats(self.mean[:n], self.std[:n], self.samples, entropy)


class Moments:
    """Running float64 sums over samples of probabilities ``[T, B, C, *S]`` (sample axis
    :data:`SAMPLE_AXIS`): of ``p``, ``p**2`` and :func:`entropy` (``p`` float32 or float64;
    the entropy of each sample is computed in ``p``'s dtype, only its sum in float64)."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor = torch.zeros((), dtype=torch.float64)
        self.total_sq: torch.Tensor = torch.zeros((), dtype=torch.float64)
        self.total_entropy: torch.Tensor = torch.zeros((), dtype=torch.float64)

    def add(self, p: torch.Tensor) -> None:
        """Add the samples ``p`` ``[t, B, C, *S]``."""
        h = entropy(p.flatten(0, 1)).view(p.shape[0], p.shape[1], *p.shape[3:])
        p = p.double()
        self.count += p.shape[SAMPLE_AXIS]
        self.total = self.total + p.sum(SAMPLE_AXIS)
        self.total_sq = self.total_sq + p.square().sum(SAMPLE_AXIS)
        self.total_entropy = self.total_entropy + h.double().sum(SAMPLE_AXIS)

    def stats(self) -> McStats:
        """The :class:`McStats` ``[B, ...]`` of the samples added so far (float32, CPU)."""
        if self.count < 1:
            raise ValueError("no samples were added")
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean.square()).clamp_min_(0.0)
        return McStats(
            mean.float().cpu(),
            var.sqrt_().float().cpu(),
            self.count,
            (self.total_entropy / self.count).float().cpu(),
        )


def concat(parts: Sequence[McStats]) -> McStats:
    """Statistics of several groups of patches (same ``samples``) along the patch axis."""
    if not parts or len({s.samples for s in parts}) != 1:
        raise ValueError("need at least one McStats, all with the same number of samples")
    entropies = [s.expected_entropy for s in parts]
    return McStats(
        torch.cat([s.mean for s in parts]),
        torch.cat([s.std for s in parts]),
        parts[0].samples,
        None if any(e is None for e in entropies) else torch.cat(entropies),  # type: ignore[arg-type]
    )


@torch.inference_mode()
def mc_statistics(
    model: nn.Module,
    images: torch.Tensor,
    ids: Sequence[int],
    samples: int,
    batch: int,
    seed: int,
    runtime: Runtime,
    progress: bool = False,
) -> McStats:
    """MC-dropout statistics of ``images`` ``[N, 1, *S]`` (normalised) whose stable ids are
    ``ids`` (used to seed each patch's dropout masks together with ``seed``)."""
    if samples < 2:
        raise ValueError(f"need at least 2 MC samples for a std, got {samples}")
    if len(ids) != len(images):
        raise ValueError(f"{len(ids)} ids for {len(images)} images")
    if not dropout_modules(model):
        raise UserError(
            "MC-dropout scoring needs a network with dropout (torch.nn.Dropout layers, turned "
            "into MCDropout by activeseg.model.patch_dropout); add dropout, or use a "
            "strategy without MC statistics (random) or a committee (<strategy>@ensemble)"
        )
    with torch.inference_mode(False):  # weights converted here must stay trainable tensors
        runtime.place(model)
    pixels = min(batch, samples) * images[0].numel()
    per_pass = min(max(1, PASS_PIXELS // pixels), PASS_PATCHES)
    padding = torch_generator(0, runtime.device)  # masks of the padding copies
    parts = []
    bar = progress_bar(total=len(images), desc="MC scoring", leave=False, enabled=progress)
    with runtime.autocast():
        for start in range(0, len(images), per_pass):
            group = images[start : start + per_pass]
            generators = [
                torch_generator(derive_seed(seed, int(pid)), runtime.device)
                for pid in ids[start : start + per_pass]
            ]
            pad = per_pass - len(group)
            if pad:
                group = torch.cat([group, group[-1:].expand(pad, *group.shape[1:])])
            with mc_dropout(model, generators + [padding] * pad):
                stats = _accumulate(model, group, samples, batch, runtime).stats()
            parts.append(stats.first(len(generators)))
            bar.update(len(generators))
    bar.close()
    return concat(parts)


def _accumulate(
    model: nn.Module, images: torch.Tensor, samples: int, batch: int, runtime: Runtime
) -> Moments:
    """The :class:`Moments` ``[B, C, *S]`` of ``samples`` MC probability maps of each of
    ``images`` ``[B, 1, *S]``, ``batch`` samples of every image per pass (called under
    ``runtime.autocast()`` and :func:`~activeseg.model.mc_dropout` with one generator per
    image)."""
    x = runtime.tensor(images)
    fmt = runtime.memory_format_for(x.ndim)
    if isinstance(model, UNet):
        cache = model.stem_cache(x)

        def passes(n: int) -> torch.Tensor:
            return model.forward_cached(cache, n, fmt)
    else:

        def passes(n: int) -> torch.Tensor:
            return model(x.repeat_interleave(n, dim=0).contiguous(memory_format=fmt))

    moments = Moments()
    for start in range(0, samples, batch):
        n = min(batch, samples - start)
        probs = probabilities(passes(n).float())  # [B * n, C, *S], patch-major
        moments.add(probs.unflatten(0, (len(x), n)).transpose(0, 1))
    return moments
