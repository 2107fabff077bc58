"""What every benchmark shares: sizes, timing side by side, memory, FLOPs, the machine."""

from __future__ import annotations

import functools
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from activeseg.config import ScoringConfig
from activeseg.data.patches import tile
from activeseg.data.phantom import make_phantom
from activeseg.model import UNet, fusion
from activeseg.presets import preset
from activeseg.runtime import torch_generator


@dataclass(frozen=True)
class Sizes:
    """What a benchmark run measures (``--quick``: seconds, for the plumbing test)."""

    samples: int  # MC samples T
    pool: int  # patches scored
    patch: int  # pixels, the cpu network's patches (the cpu preset's)
    paper_patch: int  # pixels, the paper network's patches
    mc_batch: int  # activeseg MC samples per forward (the config default)
    baal_batch: int  # patches per baal default call (replicated T times)
    paper_pool: int  # patches scored with the paper network (0: not measured)
    train_steps: int  # training steps timed (the paper network: a quarter of them)
    train_batch: int  # the cpu preset's
    members: int  # committee members of the stacked-vs-separate rows
    matmul: int  # matrix side of the peak measurement
    repeats: int  # timings per method, interleaved across methods; the median is reported
    sem_overrides: dict[str, Any]


_CPU = preset("cpu")
FULL = Sizes(
    samples=50,
    pool=48,
    patch=_CPU.data.patch_size,
    paper_patch=128,
    mc_batch=ScoringConfig.mc_batch,
    baal_batch=2,
    paper_pool=4,
    train_steps=40,
    train_batch=_CPU.train.batch_size,
    members=5,
    matmul=2048,
    repeats=3,
    sem_overrides={},
)
QUICK_SEM = {"data.patch_size": 32, "train.epochs": 1, "scoring.mc_samples": 2, "data.n_pool": 4}
QUICK = Sizes(4, 2, 32, 32, 2, 1, 0, 2, 2, 2, 256, 1, QUICK_SEM)


@dataclass(frozen=True)
class Context:
    """What every benchmark function receives: the run's sizes, the machine's matmul peaks
    (GFLOP/s by dtype name) and where progress lines go."""

    sizes: Sizes
    peaks: dict[str, float]
    log: Callable[[str], None]


Row = dict[str, float]
Timed = dict[str, tuple[Any, float, float]]  # method -> (last result, median s, peak MB)

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_info() -> dict[str, Any]:
    """The CPU's model name and which of :data:`CPU_FLAGS` it has (Linux ``/proc/cpuinfo``;
    elsewhere the platform's processor string and no flags)."""
    model, flags = platform.processor() or platform.machine(), set()
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return {"model": model, "flags": [f for f in CPU_FLAGS if f in flags]}


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
) -> Timed:
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


def rate(seconds: float, peak_mb: float, flops: float, peaks: dict[str, float]) -> Row:
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
    """FLOPs of the matmuls and convolutions ``fn`` executes (with the fused convolutions of
    :func:`activeseg.model.inference` unfused: the counter does not see oneDNN's op)."""
    with FlopCounterMode(display=False) as counter, fusion(False):
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
    """A seeded U-Net (one channel in and out, dropout 0.2) in evaluation mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet(1, 1, depth, filters, 0.2).eval()


def pool_images(n: int, patch: int) -> torch.Tensor:
    """``n`` standardised phantom patches ``[n, 1, patch, patch]``."""
    per_image = max(1, (256 // patch) ** 2)
    samples = make_phantom(n_images=-(-n // per_image), size=256, seed=0)
    images = torch.from_numpy(tile(samples, patch).images[:n]).float()
    return (images - images.mean()) / images.std()
