"""Training throughput: :func:`activeseg.train.fit` against a plain fp32 NCHW loop."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import numpy as np
import torch
from monai.losses import DiceLoss
from scipy import ndimage

from activeseg.bench import measure
from activeseg.config import TrainConfig
from activeseg.model import UNet, seeded_dropout
from activeseg.runtime import Runtime, resolve, torch_generator
from activeseg.train import Labelled, fit


def plain_augment(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample numpy augmentation as Keras does it: rotation, zoom, shift and flips as one
    affine map, image bilinear, mask nearest. ``image``/``mask`` ``[H, W]``."""
    h, w = image.shape
    angle, zoom = np.radians(rng.uniform(-10, 10)), np.exp(rng.uniform(-1, 1) * np.log(1.2))
    flip = np.where(rng.random(2) < 0.5, -1.0, 1.0)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = rot @ np.diag(flip) / zoom
    centre = np.array([h, w]) / 2
    offset = centre - matrix @ centre + rng.uniform(-0.1, 0.1, 2) * np.array([h, w])
    img = ndimage.affine_transform(image, matrix, offset, order=1, mode="nearest")
    msk = ndimage.affine_transform(mask, matrix, offset, order=0, mode="nearest")
    return img, msk


def plain_train(
    model: UNet, images: torch.Tensor, masks: torch.Tensor, steps: int, batch: int
) -> None:
    """fp32 NCHW training steps with per-sample augmentation (the baseline)."""
    model = model.to(memory_format=torch.contiguous_format).train()  # type: ignore[call-overload]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = DiceLoss(sigmoid=True, batch=True)
    rng = np.random.default_rng(0)
    x_np, y_np = images.numpy(), masks.numpy()
    with seeded_dropout(model, torch_generator(0)):
        for _ in range(steps):
            idx = rng.choice(len(x_np), batch, replace=len(x_np) < batch)
            pairs = [plain_augment(x_np[i, 0], y_np[i, 0], rng) for i in idx]
            x = torch.from_numpy(np.stack([p[0] for p in pairs])[:, None])
            y = torch.from_numpy(np.stack([p[1] for p in pairs])[:, None])
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def train_config(steps: int, batch: int) -> TrainConfig:
    """``steps`` steps of ``batch`` patches, one validation (at the end)."""
    return TrainConfig(epochs=steps, steps_per_epoch=1, batch_size=batch, validate_every=10**6)


def activeseg_train(
    model: UNet, images: torch.Tensor, masks: torch.Tensor, steps: int, batch: int, rt: Runtime
) -> None:
    """:func:`activeseg.train.fit` for ``steps`` steps (one validation, on one patch, at the
    end)."""
    val = Labelled(images[:1], masks[:1])
    fit(model, Labelled(images, masks), val, train_config(steps, batch), rt, torch_generator(0))


def train_step_flops(model: UNet, batch: int, patch: int) -> int:
    """FLOPs of one forward and backward pass of a batch."""
    model = copy.deepcopy(model).train()
    x = torch.randn(batch, 1, patch, patch)

    def step() -> None:
        with seeded_dropout(model, torch_generator(0)):
            model(x).sum().backward()

    return measure.count_flops(step)


def training_data(sizes: measure.Sizes, patch: int) -> Labelled:
    """Phantom patches of ``patch`` pixels and thresholded masks, twice the batch (at least
    4)."""
    images = measure.pool_images(max(sizes.train_batch * 2, 4), patch)
    return Labelled(images, (images > 0.5).float())


def bench_train(
    ctx: measure.Context, name: str, model: UNet, steps: int, patch: int
) -> dict[str, measure.Row]:
    """One row per method: ``steps`` training steps of batch ``ctx.sizes.train_batch`` of
    ``patch``-pixel patches."""
    sizes = ctx.sizes
    images, masks = training_data(sizes, patch)
    flops = train_step_flops(model, sizes.train_batch, patch)
    batch = sizes.train_batch
    methods: dict[str, Callable[[int], None]] = {
        "plain fp32 NCHW": lambda s: plain_train(copy.deepcopy(model), images, masks, s, batch),
        "activeseg fp32": lambda s: activeseg_train(
            copy.deepcopy(model), images, masks, s, batch, resolve("cpu", "fp32")
        ),
        "activeseg bf16": lambda s: activeseg_train(
            copy.deepcopy(model), images, masks, s, batch, resolve("cpu", "bf16")
        ),
    }
    timed = measure.interleaved(methods, steps, 2, sizes.repeats)
    rows = {}
    for method in methods:
        _, seconds, peak = timed[method]
        rows[method] = {
            **measure.rate(seconds, peak, flops * steps, ctx.peaks),
            "images_per_s": steps * batch / seconds,
        }
        ctx.log(f"  train {name}: {method}: {steps * batch / seconds:.1f} images/s")
    return rows


def bench_committee(
    ctx: measure.Context, depth: int, filters: int, steps: int
) -> dict[str, measure.Row]:
    """``steps`` training steps (``precision=auto``) of one member, of ``ctx.sizes.members``
    members one after the other (:func:`~activeseg.train.fit` each) and of the same members
    in :func:`~activeseg.committee.fit_members` (the member loop, and grouped convolutions):
    seconds and images/s per member."""
    from activeseg.committee import fit_members

    sizes, runtime = ctx.sizes, resolve("cpu", "auto")
    train = training_data(sizes, sizes.patch)
    val = Labelled(train.images[:1], train.masks[:1])
    cfg = train_config(steps, sizes.train_batch)

    def members(n: int) -> list[UNet]:
        return [measure.make_net(depth, filters, seed) for seed in range(n)]

    def separate(n: int) -> None:
        for seed, model in enumerate(members(n)):
            fit(model, train, val, cfg, runtime, torch_generator(seed))

    def stacked(n: int, grouped: bool) -> None:
        generators = [torch_generator(seed) for seed in range(n)]
        fit_members(members(n), train, val, cfg, runtime, generators, grouped=grouped)

    m = sizes.members
    methods: dict[str, Callable[[int], None]] = {
        "one member": lambda n: separate(1),
        f"{m} members, one after the other": lambda n: separate(n),
        f"{m} members, fit_members": lambda n: stacked(n, False),
        f"{m} members, fit_members grouped": lambda n: stacked(n, True),
    }
    timed = measure.interleaved(methods, m, 2, sizes.repeats)
    rows = {}
    for method, (_, seconds, peak) in timed.items():
        count = 1 if method == "one member" else m
        rows[method] = {
            "seconds": seconds,
            "peak_mb": peak,
            "images_per_s": count * steps * sizes.train_batch / seconds,
        }
        ctx.log(f"  committee: {method}: {seconds:.2f} s")
    return rows


def step_seconds_by_patch(
    ctx: measure.Context, depth: int, filters: int, steps: int, patches: tuple[int, ...]
) -> dict[int, float]:
    """Seconds per training step (:func:`~activeseg.train.fit`, ``precision=auto``, batch
    ``ctx.sizes.train_batch``) of one network at each patch size, timed side by side. The
    smallest patch shows the cost of a step that does not scale with the pixels (per-layer
    calls, the optimiser): what stacking networks into one could at most share."""
    sizes, runtime = ctx.sizes, resolve("cpu", "auto")
    model = measure.make_net(depth, filters)

    def train(data: Labelled, steps: int) -> None:
        activeseg_train(copy.deepcopy(model), *data, steps, sizes.train_batch, runtime)

    methods: dict[str, Callable[[int], None]] = {
        str(p): functools.partial(train, training_data(sizes, p)) for p in patches
    }
    timed = measure.interleaved(methods, steps, 2, sizes.repeats)
    out = {p: timed[str(p)][1] / steps for p in patches}
    ctx.log("  train step: " + ", ".join(f"{p} px {1e3 * s:.1f} ms" for p, s in out.items()))
    return out
