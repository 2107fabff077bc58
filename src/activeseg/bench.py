"""Benchmarks measured side by side in one process: ratios, not absolute claims.

``activeseg bench [--quick] [--json FILE] [--sem PATH]`` (or ``python benchmarks/bench.py``)
prints one table and optionally writes the numbers as JSON:

* **Peaks**: the fp32 and bf16 matmul throughput of this machine, measured now.
* **MC scoring** (T samples of a pool of patches, the ``cpu`` preset network and the paper
  network): activeseg's engine (:func:`activeseg.scoring.mc_statistics`) vs a naive fp32 loop
  (one forward per sample and patch, NCHW, all outputs kept) vs baal 2's
  ``ModelWrapper.predict_on_batch`` (default: the batch replicated T times in memory) and with
  ``MCCachingModule`` (T calls, the layers before the first dropout cached). Seconds (the
  median of 3 timings per method, taken round-robin over the methods), patches/s, peak
  resident memory above the start, executed GFLOP/s (FLOPs counted by
  :class:`torch.utils.flop_counter.FlopCounterMode` on one patch) as a fraction of both peaks,
  and the correlation of the per-patch std sums with the naive loop's.
* **Training**: images/s of :func:`activeseg.train.fit` vs a plain fp32 NCHW loop with
  per-sample (scipy) augmentation, for both networks.
* **One AL iteration** of the ``cpu`` preset on the SEM data (``--sem``; the phantom
  otherwise): seconds of train / eval / score.

baal is optional (``pip install activeseg[bench]``); without it its rows are skipped and its
ratios are ``null``. The headline ratios (``mc_speedup_vs_baal_cached``, ...) are the ``cpu``
network's; the same keys ending in ``_paper_net`` are the paper network's. Run it on an idle
machine.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceLoss
from scipy import ndimage
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from activeseg.config import ScoringConfig, TrainConfig, with_overrides
from activeseg.data.patches import tile
from activeseg.data.phantom import make_phantom
from activeseg.files import atomic_write_text, read_records
from activeseg.model import MCDropout, UNet, probabilities, seeded_dropout
from activeseg.presets import preset
from activeseg.runtime import Runtime, resolve, torch_generator
from activeseg.scoring import mc_statistics


@dataclass(frozen=True)
class Sizes:
    """What a benchmark run measures (``--quick``: seconds, for the plumbing test)."""

    samples: int  # MC samples T
    pool: int  # patches scored
    patch: int  # pixels
    mc_batch: int  # activeseg MC samples per forward (the config default)
    baal_batch: int  # patches per baal default call (replicated T times)
    paper_pool: int  # patches scored with the paper network (0: not measured)
    train_steps: int  # training steps timed (the paper network: a quarter of them)
    train_batch: int
    matmul: int  # matrix side of the peak measurement
    repeats: int  # timings per method, interleaved across methods; the median is reported
    sem_overrides: dict[str, Any]


FULL = Sizes(50, 16, 128, ScoringConfig.mc_batch, 2, 4, 20, 8, 2048, 3, {})
QUICK_SEM = {"data.patch_size": 32, "train.epochs": 1, "scoring.mc_samples": 2, "data.n_pool": 4}
QUICK = Sizes(4, 2, 32, 2, 1, 0, 2, 2, 256, 1, QUICK_SEM)


# ------------------------------------------------------------------------------- helpers


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set of this process, MB (Linux ``/proc``; else zeros)."""
    status = Path("/proc/self/status")
    if not status.exists():
        return 0.0, 0.0
    values = {}
    for line in status.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def reset_peak() -> None:
    """Reset the process's peak resident set to the current one (Linux ``clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Run ``fn``; (its result, seconds, peak resident memory above the start in MB)."""
    reset_peak()
    before, _ = rss_mb()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    return out, seconds, max(rss_mb()[1] - before, 0.0)


def interleaved(
    methods: dict[str, Callable[[Any], Any]], full: Any, small: Any, repeats: int
) -> dict[str, tuple[Any, float, float]]:
    """Warm every method up on ``small`` (allocator, oneDNN primitives), then time it on
    ``full`` ``repeats`` times, round-robin over the methods (a transient load slows all
    alike, so the ratios stay fair); per method (last result, median seconds, largest peak
    memory above the start in MB)."""
    for fn in methods.values():
        fn(small)
    runs: dict[str, list[tuple[Any, float, float]]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            runs[name].append(measure(functools.partial(fn, full)))
    return {
        name: (r[-1][0], float(np.median([x[1] for x in r])), max(x[2] for x in r))
        for name, r in runs.items()
    }


def rate(seconds: float, peak_mb: float, flops: float, peaks: dict[str, float]) -> dict[str, float]:
    """The columns every benchmark row shares: time, memory, executed GFLOP/s and its fraction
    of the fp32 and bf16 matmul peaks."""
    gflops = flops / seconds / 1e9
    return {
        "seconds": seconds,
        "peak_mb": peak_mb,
        "gflop_per_s": gflops,
        "fraction_of_fp32_peak": gflops / peaks["fp32"],
        "fraction_of_bf16_peak": gflops / peaks["bf16"],
    }


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the matmuls and convolutions ``fn`` executes."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(dtype: torch.dtype, n: int, seconds: float = 1.0) -> float:
    """Best GFLOP/s of an ``n x n`` matmul in ``dtype`` over about ``seconds``."""
    g = torch_generator(0)
    a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
    a @ b  # warm-up
    best, end = 0.0, time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
        if time.perf_counter() > end:
            return best


def make_net(depth: int, filters: int, seed: int = 0) -> UNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet(1, 1, depth, filters, 0.2).eval()


def pool_images(n: int, patch: int) -> torch.Tensor:
    """``n`` standardised phantom patches ``[n, 1, patch, patch]``."""
    per_image = max(1, (256 // patch) ** 2)
    samples = make_phantom(n_images=-(-n // per_image), size=256, seed=0)
    images = torch.from_numpy(tile(samples, patch).images[:n]).float()
    return (images - images.mean()) / images.std()


def torch_dropout_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every :class:`MCDropout` replaced by ``nn.Dropout`` (what
    baal patches), in NCHW."""
    out = copy.deepcopy(model).to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    for name, module in list(out.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, MCDropout):
                setattr(module, child_name, nn.Dropout(child.p))
        del name
    return out


# --------------------------------------------------------------------------- MC scoring

Stats = tuple[torch.Tensor, torch.Tensor]  # mean, std [N, 1, H, W]


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
    name: str,
    model: UNet,
    sizes: Sizes,
    peaks: dict[str, float],
    log: Callable[[str], None],
    pool: int,
    bf16: bool = True,
) -> dict[str, dict[str, float]]:
    """One row per method for ``pool`` patches: seconds, patches/s, peak MB, GFLOP/s,
    fractions of the peaks, correlation of per-patch std sums with the naive loop's;
    ``bf16``: also activeseg with bf16 autocast."""
    images = pool_images(pool, sizes.patch)
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
    rows: dict[str, dict[str, float]] = {}
    timed = interleaved(methods, images, images[:1], sizes.repeats)
    reference: torch.Tensor | None = None
    for method, fn in methods.items():
        (_, std), seconds, peak = timed[method]
        flops = count_flops(functools.partial(fn, images[:1])) * len(images)
        score = std.double().flatten(1).sum(1)
        if reference is None:
            reference = score
        corr = float(torch.corrcoef(torch.stack([score, reference]))[0, 1])
        rows[method] = {
            **rate(seconds, peak, flops, peaks),
            "patches": len(images),
            "patches_per_s": len(images) / seconds,
            "std_sum_correlation_with_naive": corr,
        }
        gflops = rows[method]["gflop_per_s"]
        log(f"  MC {name}: {method}: {seconds:.2f} s, {gflops:.1f} GFLOP/s, {peak:.0f} MB")
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


# ----------------------------------------------------------------------------- training


def plain_augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple:
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


def activeseg_train(
    model: UNet, images: torch.Tensor, masks: torch.Tensor, steps: int, batch: int, rt: Runtime
) -> None:
    """:func:`activeseg.train.fit` for ``steps`` steps (one validation, on one patch, at the
    end)."""
    from activeseg.train import Labelled, fit

    cfg = TrainConfig(epochs=steps, steps_per_epoch=1, batch_size=batch, validate_every=10**6)
    fit(
        model, Labelled(images, masks), Labelled(images[:1], masks[:1]), cfg, rt, torch_generator(0)
    )


def train_step_flops(model: UNet, batch: int, patch: int) -> int:
    """FLOPs of one forward and backward pass of a batch."""
    model = copy.deepcopy(model).train()
    x = torch.randn(batch, 1, patch, patch)

    def step() -> None:
        with seeded_dropout(model, torch_generator(0)):
            model(x).sum().backward()

    return count_flops(step)


def bench_train(
    name: str,
    model: UNet,
    sizes: Sizes,
    peaks: dict[str, float],
    log: Callable[[str], None],
    steps: int,
) -> dict[str, dict[str, float]]:
    """One row per method: ``steps`` training steps of batch ``sizes.train_batch``."""
    n = max(sizes.train_batch * 2, 4)
    images = pool_images(n, sizes.patch)
    masks = (images > 0.5).float()
    flops = train_step_flops(model, sizes.train_batch, sizes.patch)
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
    timed = interleaved(methods, steps, 2, sizes.repeats)
    rows = {}
    for method in methods:
        _, seconds, peak = timed[method]
        rows[method] = {
            **rate(seconds, peak, flops * steps, peaks),
            "images_per_s": steps * batch / seconds,
        }
        log(f"  train {name}: {method}: {steps * batch / seconds:.1f} images/s")
    return rows


# ------------------------------------------------------------------------- AL iteration


def bench_iteration(sem: str | None, sizes: Sizes) -> dict[str, float]:
    """Seconds of iteration 0 (train, eval, score) of the ``cpu`` preset, ``std_edt``."""
    from activeseg.simulation import simulate

    overrides: dict[str, Any] = {
        "data.source": sem or "synthetic",
        "loop.strategies": "std_edt",
        "loop.repetitions": 1,
        "loop.iterations": 1,
        "loop.upper_bound": False,
        **sizes.sem_overrides,
    }
    if sem is None:
        overrides.setdefault("data.pixel_size", None)
    config = with_overrides(preset("cpu"), overrides)
    with tempfile.TemporaryDirectory() as tmp:
        out = simulate(config, Path(tmp) / "run", progress=False, log=lambda line: None)
        record = read_records(out / "records-std_edt-rep0.jsonl")[0]
    seconds = {k: float(v) for k, v in record["seconds"].items()}
    return {**seconds, "total": sum(seconds.values())}


# ----------------------------------------------------------------------------------- run


def run(
    quick: bool = False, sem: str | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """All benchmarks; the result dict (see the module docstring)."""
    sizes = QUICK if quick else FULL
    load_before = os.getloadavg()
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"native bf16: {resolve('cpu', 'auto').bf16}, baal: {have_baal()}")  # fmt: skip
    peaks = {
        "fp32": matmul_peak(torch.float32, sizes.matmul),
        "bf16": matmul_peak(torch.bfloat16, min(sizes.matmul, 1024)),  # emulated bf16 is slow
    }
    log(f"  matmul peak: fp32 {peaks['fp32']:.1f}, bf16 {peaks['bf16']:.1f} GFLOP/s")
    cpu = preset("cpu").model
    nets = {"cpu": make_net(cpu.depth, cpu.base_filters)}
    if sizes.paper_pool:
        paper = preset("paper-sbem").model
        nets["paper"] = make_net(paper.depth, paper.base_filters)
    native = resolve("cpu", "auto").bf16
    mc = {  # emulated bf16 is slow: measured on the cpu network only
        name: bench_mc(
            name,
            net,
            sizes,
            peaks,
            log,
            sizes.pool if name == "cpu" else sizes.paper_pool,
            bf16=native or name == "cpu",
        )
        for name, net in nets.items()
    }
    memory = mc_memory_vs_samples(nets["cpu"], sizes)
    train = {
        name: bench_train(
            name, net, sizes, peaks, log, sizes.train_steps // (1 if name == "cpu" else 4)
        )
        for name, net in nets.items()
    }
    iteration = bench_iteration(sem, sizes)
    log(f"  AL iteration: {iteration}")
    ratios = {net: speedups(mc[net], train[net], native) for net in nets}
    return {
        **ratios["cpu"],
        **{f"{k}_paper_net": v for k, v in ratios.get("paper", {}).items()},
        "sem_iteration_seconds": iteration["total"],
        "sem_iteration_split_seconds": iteration,
        "sem_data": sem or "synthetic phantom (no --sem given)",
        "matmul_peak_gflop_per_s": peaks,
        "mc": mc,
        "mc_activeseg_peak_mb_by_samples": memory,
        "train": train,
        "sizes": {k: v for k, v in vars(sizes).items() if k != "sem_overrides"},
        "quick": quick,
        "load_average_1_5_15_before_and_after": [load_before, os.getloadavg()],
        "threads": torch.get_num_threads(),
        "native_bf16": resolve("cpu", "auto").bf16,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }


def speedups(
    mc: dict[str, dict[str, float]], train: dict[str, dict[str, float]], native_bf16: bool
) -> dict[str, float | None]:
    """The headline ratios of one network: activeseg at ``precision=auto`` (bf16 where the
    CPU has it natively) against each baseline; ``None`` where a baseline was not run."""
    mode = "activeseg bf16" if native_bf16 else "activeseg fp32"
    best = mc[mode]

    def ratio(key: str) -> float | None:
        return mc[key]["seconds"] / best["seconds"] if key in mc else None

    return {
        "mc_speedup_vs_baal_cached": ratio("baal MCCachingModule"),
        "mc_speedup_vs_baal_default": ratio("baal default"),
        "mc_speedup_vs_naive": ratio("naive fp32 loop"),
        "mc_fraction_of_bf16_peak": best["fraction_of_bf16_peak"],
        "mc_fraction_of_fp32_peak": best["fraction_of_fp32_peak"],
        "train_speedup_vs_fp32_nchw": train[mode]["images_per_s"]
        / train["plain fp32 NCHW"]["images_per_s"],
    }


def table(result: dict[str, Any]) -> str:
    """The result as one text table (Markdown)."""
    peaks = result["matmul_peak_gflop_per_s"]
    lines = [
        f"matmul peak: fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s; "
        f"{result['threads']} threads; native bf16: {result['native_bf16']}",
        "",
        "| benchmark | method | s | patches or images /s | peak MB | GFLOP/s | % fp32 peak "
        "| % bf16 peak | std-sum corr. vs naive |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for net, rows in result["mc"].items():
        for method, r in rows.items():
            lines.append(
                f"| MC, {net} net, {r['patches']} patches | {method} | {r['seconds']:.2f} "
                f"| {r['patches_per_s']:.2f} "
                f"| {r['peak_mb']:.0f} | {r['gflop_per_s']:.1f} "
                f"| {100 * r['fraction_of_fp32_peak']:.0f} "
                f"| {100 * r['fraction_of_bf16_peak']:.0f} "
                f"| {r['std_sum_correlation_with_naive']:.3f} |"
            )
    for net, rows in result["train"].items():
        for method, r in rows.items():
            lines.append(
                f"| train step, {net} net | {method} | {r['seconds']:.2f} "
                f"| {r['images_per_s']:.1f} | {r['peak_mb']:.0f} | {r['gflop_per_s']:.1f} "
                f"| {100 * r['fraction_of_fp32_peak']:.0f} "
                f"| {100 * r['fraction_of_bf16_peak']:.0f} | |"
            )
    split = result["sem_iteration_split_seconds"]
    lines += [
        "",
        f"one AL iteration, cpu preset ({result['sem_data']}): train {split['train']:.1f} s, "
        f"eval {split['eval']:.1f} s, score {split['score']:.1f} s, total {split['total']:.1f} s",
        f"activeseg MC peak memory by T: {result['mc_activeseg_peak_mb_by_samples']}",
        "",
    ]
    keys = [k for k, v in result.items() if k.startswith(("mc_speedup", "mc_fraction",
            "train_speedup", "sem_iteration_seconds")) and not isinstance(v, dict)]  # fmt: skip
    lines += [f"{k}: {'n/a' if result[k] is None else f'{result[k]:.3g}'}" for k in keys]
    return "\n".join(lines)


def bench(quick: bool = False, json_path: Path | None = None, sem: str | None = None) -> int:
    """``activeseg bench``: run, print the table, write the JSON; exit code 0."""
    result = run(quick, sem)
    print(table(result))
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(result, indent=1))
    return 0
