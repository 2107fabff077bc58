"""Peak memory of scoring a pool: chunked and streamed to disk vs the whole pool at once.

Run one measurement per process (``ru_maxrss`` is a per-process peak)::

    python benchmarks/scoring_memory.py --pool 2000 [--patch 64] [--whole]

Prints one JSON line: pool size, resident set (MB) before scoring (data and model loaded,
one patch scored to warm up) and its peak during scoring, their difference, seconds and the
maps file size. ``--whole`` scores the way the loop did before chunking (all MC statistics of
the pool in memory, one ``np.savez_compressed``) for comparison.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from activeseg.acquisition import get_strategy
from activeseg.loop import Chunk, score_pool
from activeseg.model import UNet
from activeseg.runtime import numpy_generator, resolve, torch_generator
from activeseg.scoring import McStats, mc_statistics
from activeseg.simulation.rundir import MapsWriter


def rss_mb() -> float:
    """Peak resident set of this process so far, MB: ``VmHWM`` on Linux (``ru_maxrss``
    would carry the peak of the parent process over ``fork`` and ``exec``), else
    ``ru_maxrss``."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Learner:
    """Only :meth:`statistics`: MC dropout of a tiny U-Net on in-memory patches."""

    def __init__(self, images: torch.Tensor, samples: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.model = UNet(1, 1, depth=2, base_filters=4, dropout=0.2).eval()
        self.images, self.samples = images, samples
        self.runtime = resolve("cpu", "fp32")

    def statistics(self, ids: np.ndarray, seed: int) -> McStats:
        return mc_statistics(
            self.model, self.images[ids], ids.tolist(), self.samples, 2, seed, self.runtime
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pool", type=int, required=True)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--whole", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n, p = args.pool, args.patch
    images = torch.randn(n, 1, p, p, generator=torch_generator(0))
    learner = Learner(images, args.samples)
    strategy = get_strategy("std_edt")
    pool = np.arange(n)
    score_pool(learner, strategy, pool[:1], 0, 0, numpy_generator(0), 1, lambda c: None)
    before = rss_mb()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "maps.npz"
        if args.whole:
            stats = learner.statistics(pool, 1)
            scores = strategy.score(stats, n, numpy_generator(0))
            assert scores.maps is not None
            arrays = {
                "ids": pool,
                "scores": scores.scores,
                "map": scores.maps.half().numpy(),
                "std": stats.std[:, 0].half().numpy(),
                "mean": stats.mean[:, 0].half().numpy(),
            }
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
            path.write_bytes(buffer.getvalue())
        else:
            writer = MapsWriter(path, n)

            def sink(chunk: Chunk) -> None:
                assert chunk.scores.maps is not None and chunk.stats is not None
                writer.add(
                    chunk.ids,
                    chunk.scores.scores,
                    map=chunk.scores.maps.half().numpy(),
                    std=chunk.stats.std[:, 0].half().numpy(),
                    mean=chunk.stats.mean[:, 0].half().numpy(),
                )

            score_pool(learner, strategy, pool, 0, 1, numpy_generator(0), args.chunk, sink)
            writer.commit()
        size = path.stat().st_size
    result = {
        "pool": n,
        "patch": p,
        "mode": "whole" if args.whole else f"chunks of {args.chunk}",
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(rss_mb(), 1),
        "scoring_mb": round(rss_mb() - before, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "maps_file_mb": round(size / 1e6, 1),
    }
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
