"""Monte-Carlo dropout statistics of a pool of patches, streamed over the samples.

For each patch, ``T`` stochastic passes run with dropout on and BatchNorm frozen
(:func:`activeseg.model.mc_dropout`). The first level of the U-Net holds no dropout, so it is
computed once per patch and reused for all samples. Samples run ``mc_batch`` at a time and
only a running sum and sum of squares (float64) are kept, so memory does not grow with ``T``.

Every patch draws its dropout masks from its own generator seeded by ``(seed, patch id)``:
its statistics do not depend on which other patches are scored with it or in which order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from activeseg.model import UNet, mc_dropout, probabilities
from activeseg.runtime import Runtime, derive_seed, torch_generator

SAMPLE_AXIS = 0  # the MC-sample axis of a per-patch batch of stochastic outputs


@dataclass(frozen=True)
class McStats:
    """Per-pixel statistics over MC samples, float32 on the CPU.

    ``mean``: mean probability ``[N, C, H, W]``; ``std``: standard deviation over the samples
    (population, ``ddof = 0``) ``[N, C, H, W]``; ``samples``: ``T``.
    """

    mean: torch.Tensor
    std: torch.Tensor
    samples: int

    def __len__(self) -> int:
        return self.mean.shape[0]


@torch.inference_mode()
def mc_statistics(
    model: UNet,
    images: torch.Tensor,
    ids: Sequence[int],
    samples: int,
    batch: int,
    seed: int,
    runtime: Runtime,
    progress: bool = False,
) -> McStats:
    """MC-dropout mean and std of ``images`` ``[N, 1, H, W]`` (normalised) whose stable ids
    are ``ids`` (used to seed each patch's dropout masks together with ``seed``)."""
    if samples < 2:
        raise ValueError(f"need at least 2 MC samples for a std, got {samples}")
    if len(ids) != len(images):
        raise ValueError(f"{len(ids)} ids for {len(images)} images")
    with torch.inference_mode(False):  # weights converted here must stay trainable tensors
        runtime.place(model)
    means, stds = [], []
    bar = tqdm(total=len(images), desc="MC scoring", leave=False, disable=not progress)
    for image, pid in zip(images, ids, strict=True):
        generator = torch_generator(derive_seed(seed, int(pid)), runtime.device)
        with mc_dropout(model, generator):
            total, total_sq = _accumulate(model, image, samples, batch, runtime)
        mean = total / samples
        var = (total_sq / samples - mean.square()).clamp_min_(0.0)
        means.append(mean.float().cpu())
        stds.append(var.sqrt_().float().cpu())
        bar.update()
    bar.close()
    return McStats(torch.stack(means), torch.stack(stds), samples)


def _accumulate(
    model: UNet, image: torch.Tensor, samples: int, batch: int, runtime: Runtime
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and sum of squares ``[C, H, W]`` (float64) of ``samples`` MC probability maps."""
    x = runtime.tensor(image[None])
    with runtime.autocast():
        stem = model.stem(x)
    total = torch.zeros((), dtype=torch.float64)
    total_sq = torch.zeros((), dtype=torch.float64)
    for start in range(0, samples, batch):
        n = min(batch, samples - start)
        expanded = stem.expand(n, *stem.shape[1:]).contiguous(memory_format=runtime.memory_format)
        with runtime.autocast():
            logits = model.forward_from_stem(expanded)
        p = probabilities(logits.float()).double()
        total = total + p.sum(SAMPLE_AXIS)
        total_sq = total_sq + p.square().sum(SAMPLE_AXIS)
    return total, total_sq
