"""MC-dropout scoring: activeseg's engine against a naive fp32 loop and baal 2."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import torch
from torch import nn

from activeseg.bench.measure import (
    Context,
    Row,
    Sizes,
    count_flops,
    interleaved,
    make_net,
    measure,
    pool_images,
    rate,
)
from activeseg.data.patches import tile
from activeseg.data.phantom import make_phantom
from activeseg.model import MCDropout, UNet, probabilities
from activeseg.runtime import Runtime, resolve, torch_generator
from activeseg.scoring import mc_statistics

Stats = tuple[torch.Tensor, torch.Tensor]  # mean, std [N, 1, H, W]


def torch_dropout_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every :class:`MCDropout` replaced by ``nn.Dropout`` (what
    baal patches), in NCHW."""
    out = copy.deepcopy(model).to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    for module in list(out.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, MCDropout):
                setattr(module, child_name, nn.Dropout(child.p))
    return out


def naive_mc(model: UNet, images: torch.Tensor, samples: int, seed: int) -> Stats:
    """The plain way: ``nn.Dropout`` switched on (BatchNorm frozen), global RNG seeded with
    ``seed``, one fp32 NCHW forward per sample and patch, all outputs kept, then mean and
    (population) std."""
    net = torch_dropout_copy(model).eval()
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.train()
    means, stds = [], []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for image in images:
            out = torch.stack([probabilities(net(image[None]))[0] for _ in range(samples)])
            means.append(out.mean(0))
            stds.append(out.std(0, correction=0))
    return torch.stack(means), torch.stack(stds)


def baal_mc(model: UNet, images: torch.Tensor, samples: int, cached: bool, batch: int) -> Stats:
    """baal 2's ``predict_on_batch``: default (input replicated ``samples`` times, ``batch``
    patches per call) or with ``MCCachingModule`` (``samples`` calls on the whole pool)."""
    from baal.bayesian.caching_utils import MCCachingModule
    from baal.bayesian.dropout import MCDropoutModule
    from baal.modelwrapper import ModelWrapper, TrainingArgs

    net: nn.Module = MCDropoutModule(torch_dropout_copy(model))
    if cached:
        net = MCCachingModule(net)
    net.eval()
    wrapper = ModelWrapper(net, TrainingArgs(use_cuda=False, replicate_in_memory=not cached))
    step = len(images) if cached else batch
    means, stds = [], []
    for i in range(0, len(images), step):
        logits = wrapper.predict_on_batch(images[i : i + step], iterations=samples)
        p = torch.sigmoid(logits)  # [B, 1, H, W, T]
        means.append(p.mean(-1))
        stds.append(p.std(-1, correction=0))
    return torch.cat(means), torch.cat(stds)


def activeseg_mc(
    model: UNet, images: torch.Tensor, samples: int, batch: int, runtime: Runtime
) -> Stats:
    """:func:`activeseg.scoring.mc_statistics` of ``images`` (ids 0 .. N-1, seed 0)."""
    stats = mc_statistics(
        copy.deepcopy(model), images, list(range(len(images))), samples, batch, 0, runtime
    )
    return stats.mean, stats.std


def have_baal() -> bool:
    try:
        import baal  # noqa: F401
    except ImportError:
        return False
    return True


def bench_mc(
    ctx: Context, name: str, model: UNet, pool: int, patch: int, bf16: bool = True
) -> dict[str, Row]:
    """One row per method for ``pool`` patches of ``patch`` pixels: seconds, patches/s, peak
    MB, GFLOP/s, fractions of the peaks, correlation of per-patch std sums with the naive
    loop's; ``bf16``: also activeseg with bf16 autocast."""
    sizes = ctx.sizes
    images = pool_images(pool, patch)
    t = sizes.samples
    methods: dict[str, Callable[[torch.Tensor], Stats]] = {
        "naive fp32 loop": lambda x: naive_mc(model, x, t, 1),
        "activeseg fp32": lambda x: activeseg_mc(
            model, x, t, sizes.mc_batch, resolve("cpu", "fp32")
        ),
    }
    if bf16:
        methods["activeseg bf16"] = lambda x: activeseg_mc(
            model, x, t, sizes.mc_batch, resolve("cpu", "bf16")
        )
    if have_baal():
        methods["baal default"] = lambda x: baal_mc(model, x, t, False, sizes.baal_batch)
        methods["baal MCCachingModule"] = lambda x: baal_mc(model, x, t, True, sizes.baal_batch)
    timed = interleaved(methods, images, images[:1], sizes.repeats)
    reference = timed["naive fp32 loop"][0][1].double().flatten(1).sum(1)
    rows: dict[str, Row] = {}
    for method, fn in methods.items():
        (_, std), seconds, peak = timed[method]
        flops = count_flops(functools.partial(fn, images))  # as executed: passes may be shared
        score = std.double().flatten(1).sum(1)
        rows[method] = {
            **rate(seconds, peak, flops, ctx.peaks),
            "patches": len(images),
            "patch": patch,
            "patches_per_s": len(images) / seconds,
            "std_sum_correlation_with_naive": float(
                torch.corrcoef(torch.stack([score, reference]))[0, 1]
            ),
        }
        ctx.log(
            f"  MC {name}: {method}: {seconds:.2f} s, {rows[method]['gflop_per_s']:.1f} GFLOP/s"
        )
    return rows


def mc_memory_vs_samples(model: UNet, sizes: Sizes) -> dict[str, float]:
    """activeseg's peak memory above the start for T/5 and T samples."""
    images = pool_images(sizes.pool, sizes.patch)
    runtime = resolve("cpu", "fp32")
    out = {}
    for t in (max(2, sizes.samples // 5), sizes.samples):
        _, _, peak = measure(
            functools.partial(activeseg_mc, model, images, t, sizes.mc_batch, runtime)
        )
        out[f"T={t}"] = peak
    return out


def trained_net(depth: int, filters: int, sizes: Sizes, patch: int, steps: int = 40) -> UNet:
    """A U-Net trained ``steps`` steps (``precision=auto``, batch ``sizes.train_batch``) on
    phantom patches of ``patch`` pixels and their myelin masks: MC rankings of an untrained
    network are noise."""
    from activeseg.bench.training import train_config
    from activeseg.train import Labelled, fit

    samples = make_phantom(n_images=4, size=256, seed=1)
    patches = tile(samples, patch)
    images = torch.from_numpy(patches.images).float()
    data = Labelled(
        (images - images.mean()) / images.std(), torch.from_numpy(patches.masks).float()
    )
    model = make_net(depth, filters)
    val = Labelled(data.images[:2], data.masks[:2])
    fit(
        model,
        data,
        val,
        train_config(steps, sizes.train_batch),
        resolve("cpu", "auto"),
        torch_generator(0),
    )
    return model.eval()


def ranking_agreement(model: UNet, sizes: Sizes, pool: int, patch: int) -> dict[str, float]:
    """Spearman correlation of the per-patch std sums of ``pool`` phantom patches of
    ``patch`` pixels (T = ``sizes.samples``): activeseg at ``precision=auto`` against a plain
    fp32 loop (seed 1), and the noise floor, the lowest of two other plain loops (seeds 2, 3)
    against it; ``within_noise_floor``: activeseg >= floor - 0.02 (the test suite's rule)."""
    from scipy.stats import spearmanr

    images = pool_images(pool, patch)
    t = sizes.samples

    def sums(std: torch.Tensor) -> torch.Tensor:
        return std.double().flatten(1).sum(1)

    plain = [sums(naive_mc(model, images, t, seed)[1]) for seed in (1, 2, 3)]
    engine = sums(activeseg_mc(model, images, t, sizes.mc_batch, resolve("cpu", "auto"))[1])

    def rho(a: torch.Tensor) -> float:
        return float(spearmanr(a.numpy(), plain[0].numpy()).statistic)

    floor = min(rho(other) for other in plain[1:])
    engine_rho = rho(engine)
    return {
        "patches": float(pool),
        "spearman_activeseg_vs_plain": engine_rho,
        "spearman_noise_floor_plain_vs_plain": floor,
        "within_noise_floor": float(engine_rho >= floor - 0.02),
    }
