"""Learning-curve probe of a preset: test Dice after training on n labelled patches.

For each seed and size n: the preset's initial patches plus n - n_initial random pool
patches (as the `random` strategy would pick them), trained from scratch; "all" is the
whole pool. Prints one JSON line per training.

    python benchmarks/probes/learning_curve.py --preset cpu --source DATA --sizes 5,20,all \
        --seeds 3 [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from activeseg.config import parse_assignments, with_overrides
from activeseg.data.prepare import prepare
from activeseg.model import output_channels, seeded_unet
from activeseg.presets import preset
from activeseg.runtime import derive_seed, resolve, torch_generator
from activeseg.train import Labelled, evaluate, fit
from activeseg.validation import validate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--source", required=True)
    parser.add_argument("--sizes", default="5,20,all")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    config = with_overrides(
        preset(args.preset), {"data.source": args.source, **parse_assignments(args.set)}
    )
    validate(config)
    data = prepare(config.data)
    runtime = resolve(config.train.device, config.train.precision)
    masks = torch.from_numpy(data.masks).float()
    split = data.split
    test = (data.images[split.test], masks[split.test])
    val = Labelled(data.images[split.val], masks[split.val])
    for seed in range(args.seeds):
        order = np.random.default_rng(seed).permutation(split.pool)
        for size in args.sizes.split(","):
            n = len(split.initial) + len(split.pool) if size == "all" else int(size)
            ids = np.concatenate([split.initial, order[: n - len(split.initial)]])
            m = config.model
            net = seeded_unet(
                derive_seed(seed, "init"), m.depth, m.base_filters, m.dropout,
                output_channels(config.data.num_classes), config.data.spatial_dims,
            )  # fmt: skip
            start = time.perf_counter()
            result = fit(
                net, Labelled(data.images[ids], masks[ids]), val, config.train, runtime,
                torch_generator(derive_seed(seed, "train", n)),
            )  # fmt: skip
            metrics = evaluate(net, *test, runtime)
            dice = {k: round(v, 4) for k, v in metrics.items() if k.startswith("dice")}
            seconds = round(time.perf_counter() - start, 1)
            row = {"seed": seed, "n": int(n), "steps": result.steps, "seconds": seconds, **dice}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
