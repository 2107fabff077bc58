"""How many samples and patches one MC forward pass should hold: seconds of
:func:`activeseg.scoring.mc_statistics` (``precision=auto``) for each ``scoring.mc_batch``
and each :data:`activeseg.scoring.PASS_PIXELS` budget (0: one patch per pass), the median
of timings taken round-robin in one process, for the ``cpu`` preset's network on its
patches and the paper network on 128² patches. Prints one JSON line per network.

    python benchmarks/probes/mc_passes.py [--samples 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from activeseg import scoring
from activeseg.bench.measure import cpu_info, make_net, pool_images
from activeseg.presets import preset
from activeseg.runtime import resolve


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=20, help="MC samples T")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="5,10,20", help="mc_batch values")
    parser.add_argument("--budgets", default="0,18,19,20", help="PASS_PIXELS exponents (0: off)")
    args = parser.parse_args()
    runtime = resolve("cpu", "auto")
    cpu = preset("cpu")
    nets = {
        "cpu": (make_net(cpu.model.depth, cpu.model.base_filters), 96, cpu.data.patch_size),
        "paper": (make_net(5, 32), 4, 128),
    }
    batches = [int(b) for b in args.batches.split(",")]
    budgets = [0 if e == "0" else 2 ** int(e) for e in args.budgets.split(",")]
    print(json.dumps({"cpu": cpu_info(), "threads": torch.get_num_threads(), "bf16": runtime.bf16}))
    for name, (net, pool, patch) in nets.items():
        images, ids = pool_images(pool, patch), list(range(pool))
        cases = [(b, px) for b in batches for px in budgets]
        times: dict[tuple[int, int], list[float]] = {case: [] for case in cases}
        for repeat in range(args.repeats + 1):  # the first round warms up
            for batch, pixels in cases:
                scoring.PASS_PIXELS = pixels
                start = time.perf_counter()
                scoring.mc_statistics(net, images, ids, args.samples, batch, 0, runtime)
                if repeat:
                    times[(batch, pixels)].append(time.perf_counter() - start)
        best = {
            f"mc_batch={b} pass_pixels={px}": statistics.median(times[(b, px)]) for b, px in cases
        }
        print(json.dumps({"net": name, "patch": patch, "patches": pool, "seconds": best}))


if __name__ == "__main__":
    main()
