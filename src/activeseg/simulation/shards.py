"""Sharded MC scoring: the pool split into contiguous shards, each scored by a Ray actor
that holds the patch images and the current model once; results merged in pool order.

Exactness: :func:`activeseg.scoring.mc_statistics` scores each patch on its own, with dropout
masks drawn from a generator seeded by ``(seed, patch id)``, so a patch's statistics do not
depend on which shard scores it. With the same weights, images, runtime and number of torch
threads (each actor uses the caller's), the merged statistics equal the single-process ones
bit for bit (tested in ``tests/test_ray.py``).

The actors are gang-scheduled in one placement group (all or none), so several runs
creating scorers at once on a small cluster wait for each other instead of deadlocking.
Needs the optional Ray extra and a connected Ray
(:func:`activeseg.simulation.executors.connect_ray`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from activeseg.errors import UserError
from activeseg.runtime import Runtime
from activeseg.scoring import McStats, concat, mc_statistics


class _ShardActor:
    """One shard's scorer (runs inside a Ray actor process)."""

    def __init__(self, images: np.ndarray, runtime: Runtime, threads: int) -> None:
        torch.set_num_threads(threads)
        self.images = images  # read-only view of the object store: one copy per node
        self.runtime = runtime
        self.model: nn.Module | None = None

    def load(self, model: nn.Module) -> None:
        self.model = model

    def statistics(self, ids: np.ndarray, samples: int, batch: int, seed: int) -> McStats:
        if self.model is None:
            raise RuntimeError("set_model() must run before statistics()")
        images = torch.from_numpy(np.ascontiguousarray(self.images[ids]))  # a writable copy
        return mc_statistics(
            self.model,
            images,
            ids.tolist(),
            samples,
            batch,
            seed,
            self.runtime,
        )


class ShardedScorer:
    """MC statistics of patches of ``images`` ``[N, 1, H, W]`` (normalised; patch id = row)
    on ``shards`` Ray actors of ``threads`` torch threads (default: the caller's) and
    ``gpus`` GPUs each.

    ``set_model`` sends a model to every actor once; ``statistics`` then scores any ids.
    """

    def __init__(
        self,
        images: torch.Tensor,
        shards: int,
        runtime: Runtime,
        threads: int | None = None,
        gpus: float = 0,
    ) -> None:
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if shards < 1:
            raise ValueError(f"shards must be >= 1, got {shards}")
        threads = threads or torch.get_num_threads()
        bundle = {"CPU": threads, **({"GPU": gpus} if gpus else {})}
        have = ray.cluster_resources()
        for key, need in bundle.items():
            if have.get(key, 0) < need * shards:
                raise UserError(
                    f"--shards {shards} need {need * shards:g} {key} ({need:g} per shard) but "
                    f"the Ray cluster has {have.get(key, 0):g}; lower --shards or "
                    "--cpus-per-run, or add nodes"
                )
        self._ray = ray
        self._remove = remove_placement_group
        self._group = placement_group([bundle] * shards, strategy="PACK")
        ray.get(self._group.ready())
        images_ref = ray.put(images.numpy())
        actor = ray.remote(_ShardActor)
        self.actors = [
            actor.options(
                num_cpus=threads,
                num_gpus=gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self._group, i),
            ).remote(images_ref, runtime, threads)
            for i in range(shards)
        ]

    def set_model(self, model: nn.Module) -> None:
        """Give every actor a copy of ``model`` (sent once; actors run calls in order)."""
        ref = self._ray.put(copy.deepcopy(model).cpu())
        for actor in self.actors:
            actor.load.remote(ref)

    def statistics(self, ids: Sequence[int], samples: int, batch: int, seed: int) -> McStats:
        """Like :func:`activeseg.scoring.mc_statistics` on ``images[ids]``: ``ids`` split into
        contiguous shards, scored in parallel and concatenated in order."""
        parts = [p for p in np.array_split(np.asarray(ids, dtype=np.int64), len(self.actors))]
        refs = [
            actor.statistics.remote(part, samples, batch, seed)
            for actor, part in zip(self.actors, parts, strict=True)
            if len(part)
        ]
        if not refs:
            raise ValueError("no ids to score")
        return concat(self._ray.get(refs))

    def close(self) -> None:
        """Stop the actors and release their resources."""
        for actor in self.actors:
            self._ray.kill(actor)
        self._remove(self._group)

    def __enter__(self) -> ShardedScorer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
