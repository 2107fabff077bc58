"""Warm start vs training from scratch: test Dice at each iteration and training time.

Runs the same simulation twice (``train.init=scratch`` and ``warm``, identical seeds, split
and preset) into ``OUT/scratch`` and ``OUT/warm`` (``--resume``-able), then prints one table
per iteration (mean over repetitions) and writes ``OUT/warm_vs_scratch.json``::

    python benchmarks/warm_start.py --data data_axondeepseg_sem --out runs/warm

With the ``random`` strategy both runs label the same patches at every iteration (its choice
does not depend on the model), so the Dice difference is the effect of the initialisation
alone. Run it on an otherwise idle machine for honest times.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from activeseg.config import with_overrides
from activeseg.files import atomic_write_text, read_records
from activeseg.presets import preset
from activeseg.simulation import simulate


def run(data: str, out: Path, init: str, args: argparse.Namespace) -> float:
    """Simulate with ``train.init=init`` into ``out``; wall-clock seconds."""
    config = with_overrides(
        preset(args.preset),
        {
            "data.source": data,
            "loop.strategies": args.strategy,
            "loop.repetitions": args.repetitions,
            "loop.iterations": args.iterations,
            "loop.upper_bound": False,
            "loop.save_maps": False,
            "train.init": init,
            **dict(s.split("=", 1) for s in args.set),
        },
    )
    start = time.perf_counter()
    simulate(config, out, resume=(out / "config.yaml").exists(), progress=False, log=print)
    return time.perf_counter() - start


def per_iteration(run_dir: Path, strategy: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test Dice, training seconds and training steps ``[repetitions, iterations + 1]``."""
    paths = sorted(run_dir.glob(f"records-{strategy}-rep*.jsonl"))
    records = [read_records(p) for p in paths]
    dice = np.array([[r["test_dice"] for r in rs] for rs in records])
    train = np.array([[r["seconds"]["train"] for r in rs] for rs in records])
    steps = np.array([[r["train_steps"] for r in rs] for rs in records])
    return dice, train, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--strategy", default="random")
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    wall = {init: run(args.data, args.out / init, init, args) for init in ("scratch", "warm")}
    (d_s, t_s, n_s), (d_w, t_w, n_w) = (
        per_iteration(args.out / init, args.strategy) for init in ("scratch", "warm")
    )
    print(f"\n{'it':>3} {'dice scratch':>12} {'dice warm':>10} {'diff':>7} "
          f"{'train s scratch':>15} {'train s warm':>12} {'steps warm':>10}")  # fmt: skip
    for i in range(d_s.shape[1]):
        print(
            f"{i:>3} {d_s[:, i].mean():>12.4f} {d_w[:, i].mean():>10.4f} "
            f"{(d_w[:, i] - d_s[:, i]).mean():>+7.4f} {t_s[:, i].mean():>15.2f} "
            f"{t_w[:, i].mean():>12.2f} {n_w[:, i].mean():>10.1f}"
        )
    later = slice(1, None)  # iteration 0 trains from scratch in both runs
    result: dict[str, Any] = {
        "strategy": args.strategy,
        "repetitions": int(d_s.shape[0]),
        "iterations": int(d_s.shape[1] - 1),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "dice_scratch": d_s.mean(0).round(4).tolist(),
        "dice_warm": d_w.mean(0).round(4).tolist(),
        "mean_dice_difference_warm_minus_scratch": float((d_w - d_s)[:, later].mean()),
        "train_seconds_scratch": float(t_s[:, later].sum(1).mean()),
        "train_seconds_warm": float(t_w[:, later].sum(1).mean()),
        "train_time_ratio_warm_over_scratch": float(t_w[:, later].sum() / t_s[:, later].sum()),
        "mean_steps_warm": float(n_w[:, later].mean()),
        "mean_steps_scratch": float(n_s[:, later].mean()),
        "wall_seconds": wall,
    }
    print(json.dumps(result, indent=1))
    atomic_write_text(args.out / "warm_vs_scratch.json", json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
