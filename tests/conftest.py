"""Shared fixtures of the core tests: a tiny phantom, a tiny U-Net, a tiny end-to-end config.

Sizes were chosen so that the whole core suite runs in well under a minute on 2 cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from activeseg.config import Config, TrainConfig, with_overrides
from activeseg.data.patches import Normalizer, split_by_source, tile
from activeseg.data.phantom import make_phantom
from activeseg.files import read_records
from activeseg.model import UNet
from activeseg.presets import preset
from activeseg.runtime import Runtime, resolve, torch_generator
from activeseg.simulation import simulate
from activeseg.train import FitResult, Labelled, fit

PATCH = 32  # tiny-phantom patch side, pixels

TINY_3D: dict[str, object] = {
    "data.source": "synthetic",
    "data.spacing": None,
    "data.patch_size": 16,
    "data.n_initial": 2,
    "data.n_pool": 6,
    "data.n_val": 2,
    "data.n_test": 3,
    "loop.iterations": 2,
}
"""Overrides of the ``cpu-3d`` preset for the 16-volume 3D phantom: 16^3 samples, split
2 / 6 / 2 / 3, 2 iterations."""


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread: the tensors here are tiny, and two threads on a 2-core machine
    where another process holds a core took 1.2 s instead of 13 ms per training step."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@dataclass(frozen=True)
class Phantom:
    """Normalised patches ``images`` float32 ``[N, 1, P, P]``, ``masks`` float {0, 1}
    ``[N, 1, P, P]``; index arrays of patches from disjoint source images."""

    images: torch.Tensor
    masks: torch.Tensor
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def make_unet(seed: int = 0, dropout: float = 0.2, base_filters: int = 8) -> UNet:
    """A depth-3 U-Net whose initialisation depends on ``seed`` only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet(1, 1, depth=3, base_filters=base_filters, dropout=dropout)


@pytest.fixture(scope="session")
def runtime() -> Runtime:
    """fp32 on the CPU: exact comparisons must not depend on the machine's bf16 support."""
    return resolve("cpu", "fp32")


@pytest.fixture(scope="session")
def phantom() -> Phantom:
    """4 easy 128² phantom images -> 64 patches of 32²: 32 train, 16 val, 16 test."""
    samples = make_phantom(n_images=4, size=128, seed=0, hard_fraction=0.0)
    patches = tile(samples, PATCH)
    split = split_by_source(patches, 0, 16, 16, None, seed=0)
    normalizer = Normalizer.fit(patches.images[split.train])
    return Phantom(
        images=torch.from_numpy(normalizer(patches.images)),
        masks=torch.from_numpy(patches.masks).float(),
        train=split.pool,
        val=split.val,
        test=split.test,
    )


@dataclass(frozen=True)
class Trained:
    model: UNet
    result: FitResult


@pytest.fixture(scope="session")
def trained(phantom: Phantom, runtime: Runtime) -> Trained:
    """A tiny U-Net trained for 80 steps on the phantom's training patches (about 1-2 s).

    Shared: tests must not modify it (deep-copy it first)."""
    model = make_unet(seed=0)
    cfg = TrainConfig(lr=1e-2, epochs=80, steps_per_epoch=1, batch_size=8, validate_every=20)
    p = phantom
    result = fit(
        model,
        Labelled(p.images[p.train], p.masks[p.train]),
        Labelled(p.images[p.val], p.masks[p.val]),
        cfg,
        runtime,
        torch_generator(0),
    )
    return Trained(model, result)


TINY_OVERRIDES: dict[str, object] = {
    "data.n_initial": 2,
    "data.n_val": 4,
    "data.n_test": 4,
    "data.n_pool": 6,
    "model.base_filters": 4,
    "train.epochs": 4,
    "train.batch_size": 4,
    "train.validate_every": 4,
    "train.precision": "fp32",
    "train.device": "cpu",
    "scoring.mc_samples": 3,
    "scoring.mc_batch": 2,
    "loop.strategies": "random,std_edt",
    "loop.repetitions": 2,
    "loop.iterations": 2,
}


PROJECT_SETTINGS = [
    "data.patch_size=32",
    "model.depth=3",
    "model.base_filters=8",
    "train.epochs=100",
    "train.steps_per_epoch=1",
    "train.batch_size=8",
    "train.validate_every=10",
    "train.device=cpu",
    "train.precision=fp32",
    "scoring.mc_samples=4",
    "scoring.mc_batch=4",
]
"""``--set`` values of the tiny annotation projects: 32-px windows, a depth-3 U-Net, 100
steps, 4 MC samples, fp32 on the CPU."""


@pytest.fixture(scope="session")
def tiny_config() -> Config:
    """The demo preset cut to ~2 s per run: 2 strategies x 2 repetitions x 3 trainings."""
    return with_overrides(preset("demo"), TINY_OVERRIDES)


@pytest.fixture(scope="session")
def tiny_run(tiny_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny config simulated in this process, one run after the other (about 2 s), the
    reference of the grid executors; tests only read it."""
    out = tmp_path_factory.mktemp("grid") / "sequential"
    return simulate(tiny_config, out, progress=False, log=lambda line: None)


def run_records(run: Path) -> dict[str, list[dict[str, Any]]]:
    """The records of every ``*.jsonl`` file of ``run`` without wall-clock timings, in
    (repetition, iteration) order: what must not depend on where the runs executed."""
    return {
        path.name: sorted(
            ({k: v for k, v in r.items() if k != "seconds"} for r in read_records(path)),
            key=lambda r: (r["repetition"], r.get("iteration", 0)),
        )
        for path in sorted(run.glob("*.jsonl"))
    }
