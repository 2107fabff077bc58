"""The tasks of a simulation grid and what one task does.

A :class:`GridTask` is the rest of one (strategy, repetition) run, or one repetition's
upper bound (training on the whole pool). :func:`execute_task` runs it in any process that
sees the run directory: it prepares the data (once per process), makes the strategy's
learner (:func:`activeseg.learners.make_learner`) and continues the active-learning loop
(:func:`activeseg.loop.run`) from the run's records, writing maps, checkpoint and record of
each iteration in that order (a record marks an iteration as done).

A task carries what a fresh process needs besides the installed package: the strategies
registered in the driving process (:func:`activeseg.acquisition.registry.registered_here`)
and the user's network factory. :func:`pack` / :func:`execute_packed` move it with
``cloudpickle``, so both may be defined in a notebook or a test.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import torch

from activeseg import loop
from activeseg.acquisition import Strategy, get_selection, get_strategy
from activeseg.acquisition.registry import StrategyFactory, register_all
from activeseg.config import Config, DataConfig
from activeseg.console import LOG_FILE, LogFile, tee
from activeseg.data.prepare import PER_IMAGE, Prepared, prepare
from activeseg.errors import TrainingDiverged, UserError
from activeseg.learners import (
    LearnerData,
    ModelLearner,
    NetworkFactory,
    checkpoint,
    make_learner,
)
from activeseg.runtime import derive_seed, resolve
from activeseg.simulation.rundir import MapsWriter, RunDirectory
from activeseg.train import Labelled


@dataclass(frozen=True)
class GridTask:
    """One independent unit of a simulation: the iterations of ``strategy`` in repetition
    ``repetition`` not yet recorded in the run directory ``out`` (``strategy`` ``None``:
    the repetition's upper bound). ``strategies``: factories registered in the driving
    process; ``network``: the user's network factory (``None``: the built-in U-Net)."""

    config: Config
    out: Path
    repetition: int
    strategy: str | None
    shards: int = 1
    quiet: bool = True
    strategies: dict[str, StrategyFactory] = field(default_factory=dict)
    network: NetworkFactory | None = None


@dataclass(frozen=True)
class TaskResult:
    """What a finished task did (plain data, returned from any process): ``trainings`` it
    ran; the upper-bound record, for the caller to store (runs write their own records)."""

    trainings: int
    upper_bound: dict[str, Any] | None = None


@dataclass(frozen=True)
class SimulatedOracle:
    """Reveals the ground-truth masks ``[N, 1, *S]`` of the requested patches."""

    masks: np.ndarray

    def reveal(self, ids: np.ndarray) -> np.ndarray:
        return self.masks[ids]


def learner_data(data: Prepared) -> LearnerData:
    """The prepared patches as a learner sees them: images by id, validation and test."""
    split = data.split

    def labelled(ids: np.ndarray) -> Labelled:
        return Labelled(data.images[ids], torch.from_numpy(data.masks[ids]).float())

    return LearnerData(data.images, labelled(split.val), labelled(split.test))


def pending_tasks(
    run: RunDirectory, config: Config, shards: int = 1, quiet: bool = True, **carry: Any
) -> tuple[list[GridTask], int]:
    """The unfinished tasks of ``run`` in the sequential order (per repetition: upper bound,
    then the strategies), and the number of trainings already recorded; ``carry``: the
    tasks' ``strategies`` and ``network``."""
    lc = config.loop
    tasks, done = [], 0
    upper_done = run.upper_bound_repetitions()
    for rep in range(lc.repetitions):
        if lc.upper_bound and rep not in upper_done:
            tasks.append(GridTask(config, run.root, rep, None, shards, quiet, **carry))
        done += lc.upper_bound and rep in upper_done
        for name in lc.strategies:
            n = len(run.records(name, rep))
            done += n
            if n < lc.iterations + 1:
                tasks.append(GridTask(config, run.root, rep, name, shards, quiet, **carry))
    return tasks, done


def pack(task: GridTask) -> bytes:
    """``task`` serialised for another process (closures and notebook classes included)."""
    return bytes(cloudpickle.dumps(task))


def execute_packed(packed: bytes) -> TaskResult:
    """:func:`execute_task` of a :func:`pack` ed task (the body of a worker)."""
    return execute_task(cloudpickle.loads(packed))


_PREPARED: dict[tuple[DataConfig, Path], Prepared] = {}
"""The data of the latest grid this worker process ran tasks of (it runs many)."""


def _log_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def execute_task(
    task: GridTask,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    data: Prepared | None = None,
) -> TaskResult:
    """Run one :class:`GridTask` in this process (any process that sees the run directory
    ``task.out``; its lock is held by the simulation that made the task). Logs a line per
    iteration to ``log`` (default, in a worker: the run's ``log.txt`` and, unless
    ``task.quiet``, stderr); ``data``: the prepared data (default: prepared here, once per
    grid and process)."""
    if log is None:
        keep = LogFile(task.out / LOG_FILE)
        log = keep if task.quiet else tee(_log_to_stderr, keep)
    register_all(task.strategies)
    config, rep = task.config, task.repetition
    if data is None:
        key = (config.data, task.out)
        if key not in _PREPARED:
            _PREPARED.clear()
            _PREPARED[key] = prepare(config.data)
        data = _PREPARED[key]
    runtime = resolve(config.train.device, config.train.precision)
    strategy = None if task.strategy is None else get_strategy(task.strategy, config.scoring)
    committee = None if strategy is None else strategy.committee
    scorer = None
    if task.shards > 1 and committee is None:
        from activeseg.simulation.shards import ShardedScorer

        scorer = ShardedScorer(data.images, task.shards, runtime)
    try:
        learner = make_learner(
            committee,
            learner_data(data),
            config,
            runtime,
            progress=progress,
            network=task.network,
            scorer=scorer,
        )
        oracle = SimulatedOracle(data.masks)
        seed = derive_seed(config.loop.seed, rep)
        if strategy is None:
            ids = data.split.train
            return TaskResult(1, upper_bound_record(learner, oracle, ids, rep, seed))
        run = RunDirectory.attach(task.out)
        trainings = run_strategy(run, learner, oracle, strategy, data, rep, seed, log)
        return TaskResult(trainings)
    finally:
        if scorer is not None:
            scorer.close()


def run_strategy(
    run: RunDirectory,
    learner: ModelLearner,
    oracle: SimulatedOracle,
    strategy: Strategy,
    data: Prepared,
    rep: int,
    seed: int,
    log: Callable[[str], None],
) -> int:
    """Continue ``strategy`` in repetition ``rep`` from its records to the end with
    ``learner`` (of the strategy's committee); returns the number of iterations run."""
    config = learner.config
    lc = config.loop
    name = strategy.name
    records = run.records(name, rep)
    state = loop.resume_state(
        data.split.initial.tolist(), data.split.pool.tolist(), records, lc.pool_policy
    )
    warm = strategy.committee is None  # committees always train from scratch
    learner.start(_warm_weights(run, config, name, rep, len(records)) if warm else None)
    sink = _MapsSink(run, name, rep, lc.save_maps)

    def persist(it: loop.Iteration) -> None:
        """Maps first (already streamed), then the checkpoint, the record last: a crash
        before the record only repeats the iteration, rewriting the same files."""
        sink.commit()
        i = it.record["iteration"]
        payload = checkpoint(learner, PER_IMAGE, iteration=i, warm_from=learner.started_from)
        run.save_checkpoint(name, rep, payload)
        threads = torch.get_num_threads()  # results depend on it in the last bits
        run.append_record(
            name, rep, {"repetition": rep, "seed": seed, "torch_threads": threads, **it.record}
        )
        r = it.record
        log(
            f"{r['strategy']:>8} rep {rep} it {r['iteration']:2d}: "
            f"{r['n_labelled']:3d} labelled, test dice {r['test_dice']:.3f} "
            f"(train {r['seconds']['train']:.1f}s, score {r['seconds']['score']:.1f}s)"
        )

    try:
        loop.run(
            learner,
            oracle,
            strategy,
            state,
            lc.iterations,
            lc.query_size,
            seed,
            start=len(records),
            on_iteration=persist,
            chunk=pool_chunk(config.data.patch_size),
            on_chunk=sink,
            select=get_selection(lc.selection, lc.stochastic_groups),
            images=data.images,
        )
    except TrainingDiverged as exc:
        done = len(run.records(name, rep))
        raise TrainingDiverged(
            f"{name} repetition {rep} iteration {done}: {exc}. The finished iterations "
            f"stay in {run.root}; a run holds one config, so start a new --out with the "
            "lower train.lr"
        ) from exc
    finally:
        sink.discard()
    return lc.iterations + 1 - len(records)


MAPS_CHUNK_BYTES = 16 * 2**20
"""Scoring works on chunks of the pool whose float32 maps take about this many bytes."""


def pool_chunk(patch_size: int) -> int:
    """Patches per scoring chunk for ``patch_size`` px patches: about 8 float32 maps of a
    patch (MC sums, mean, std, distance weights, ranking map) fit :data:`MAPS_CHUNK_BYTES`
    ``// 8`` each; at least 1 (128 patches of 64 px, 2 of 512 px)."""
    return max(1, MAPS_CHUNK_BYTES // (patch_size * patch_size * 4 * 8))


class _MapsSink:
    """Receives the scored chunks of one strategy and repetition and streams their maps
    (ranking ``map``, MC ``mean`` and ``std`` of the foreground probability, float16; for
    multi-class models of any foreground class) to the iteration's ``maps/`` file;
    :meth:`commit` puts the file in place. Nothing is written with ``enabled`` false or for
    a strategy without maps."""

    def __init__(self, run: RunDirectory, strategy: str, rep: int, enabled: bool) -> None:
        self.run, self.strategy, self.rep, self.enabled = run, strategy, rep, enabled
        self.writer: MapsWriter | None = None

    def __call__(self, chunk: loop.Chunk) -> None:
        if not self.enabled or chunk.scores.maps is None:
            return
        if self.writer is None:
            self.writer = self.run.maps_writer(
                self.strategy, self.rep, chunk.iteration, chunk.pool_size
            )
        maps = {"map": chunk.scores.maps}
        if chunk.stats is not None:
            mean, std = chunk.stats.mean[:, 0], chunk.stats.std[:, 0]
            if chunk.stats.mean.shape[1] > 1:  # softmax: channel 0 is the background
                mean = 1.0 - mean  # p(any foreground class); its std is the background's
            maps.update(std=std, mean=mean)
        arrays = {k: v.half().numpy() for k, v in maps.items()}
        self.writer.add(chunk.ids, chunk.scores.scores, **arrays)

    def commit(self) -> None:
        if self.writer is not None:
            self.writer.commit()
            self.writer = None

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.discard()
            self.writer = None


def upper_bound_record(
    learner: ModelLearner, oracle: SimulatedOracle, ids: np.ndarray, rep: int, seed: int
) -> dict[str, Any]:
    """Train once on the patches ``ids`` (initial + pool) and evaluate: the record."""
    learner.start(None)
    t0 = time.perf_counter()
    info = learner.fit(ids, oracle.reveal(ids), derive_seed(seed, "upper_bound"))
    t1 = time.perf_counter()
    metrics = learner.evaluate()
    parts = metrics.pop("eval_seconds", {})
    seconds = {"train": t1 - t0, "eval": time.perf_counter() - t1, **parts}
    record = {"repetition": rep, "seed": seed, "n_labelled": len(ids), **metrics, **info}
    return {**record, "torch_threads": torch.get_num_threads(), "seconds": seconds}


def _warm_weights(
    run: RunDirectory, config: Config, strategy: str, rep: int, done: int
) -> dict[str, torch.Tensor] | None:
    """The weights iteration ``done`` of a resumed run fine-tunes with ``train.init=warm``:
    those of iteration ``done - 1`` from the checkpoint, or, if the run stopped after
    checkpointing iteration ``done`` but before recording it, the weights that iteration
    started from (kept in its checkpoint as ``warm_from``). ``None`` for a fresh sequence."""
    if done == 0 or config.train.init != "warm":
        return None
    saved = run.load_checkpoint(strategy, rep)
    if saved["iteration"] == done - 1:
        return dict(saved["models"][0])
    if saved["iteration"] == done and saved.get("warm_from") is not None:
        return dict(saved["warm_from"])
    raise UserError(
        f"cannot resume {strategy} repetition {rep}: its checkpoint holds iteration "
        f"{saved['iteration']}, not {done - 1}; start a new --out"
    )
