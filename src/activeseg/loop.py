"""The active-learning loop: train, evaluate, score the pool, query the oracle, repeat.

The loop knows three protocols and no concrete class: a :class:`Learner` (trains on labelled
patches, evaluates, gives MC statistics), an :class:`Oracle` (reveals masks) and a
:class:`~activeseg.acquisition.Strategy`. Every random stream derives from
``(seed, iteration, purpose)``, so a loop resumed from its records continues exactly as an
uninterrupted one.

The pool is scored in chunks of ``chunk`` patches: per chunk the learner's MC statistics,
the strategy's maps and per-patch scores are computed and handed to ``on_chunk`` (e.g. to
stream the maps to disk), and only the scores are kept. Memory therefore does not grow with
the pool beyond one float per patch. A strategy without MC statistics (``needs_mc`` false)
is called once for the whole pool; one with MC statistics must score every patch from its
own statistics only, so that its scores do not depend on the chunking. After the last chunk
the strategy's ``finalize`` turns the pass's scores into ranking scores (pool-level terms,
e.g. a min–max normalisation over the pool, belong there).

Pool policy (``remove`` or ``keep``): with ``keep``, labelled patches stay in the pool and
may be chosen again; a re-chosen patch is added to the training set again at no annotation
cost. Records count the training set (``n_labelled``, with repeats) and the unique annotated
patches (``n_annotated``) separately.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from activeseg.acquisition import PoolScores, Scores, Strategy, select_top_k
from activeseg.config import POOL_POLICIES
from activeseg.runtime import derive_seed, numpy_generator
from activeseg.scoring import McStats


class Learner(Protocol):
    def fit(self, ids: np.ndarray, masks: np.ndarray, seed: int) -> dict[str, Any]:
        """Train from scratch on patches ``ids`` with ``masks`` ``[k, 1, H, W]``."""
        ...

    def evaluate(self) -> dict[str, Any]:
        """Test metrics of the current model; an ``eval_seconds`` dict among them (seconds of
        parts of the evaluation) goes into the record's ``seconds``."""
        ...

    def statistics(self, ids: np.ndarray, seed: int) -> McStats:
        """MC statistics of patches ``ids``."""
        ...

    def features(self, ids: np.ndarray) -> np.ndarray:
        """Descriptors ``[k, F]`` (float64) of patches ``ids`` for strategies with
        ``needs_features`` (e.g. the U-Net bottleneck for ``max_cover``)."""
        ...


class Oracle(Protocol):
    def reveal(self, ids: np.ndarray) -> np.ndarray:
        """Masks ``[k, 1, H, W]`` (uint8 {0, 1}) of patches ``ids``."""
        ...


@dataclass
class LoopState:
    """The training set ``labelled`` (patch ids in the order they were added; with the
    ``keep`` policy an id may repeat) and the ``pool`` to choose from."""

    labelled: list[int]
    pool: list[int]
    policy: str = "remove"

    def __post_init__(self) -> None:
        if self.policy not in POOL_POLICIES:
            raise ValueError(f"pool policy {self.policy!r} is not one of {POOL_POLICIES}")

    @property
    def n_annotated(self) -> int:
        """Unique patches annotated so far (initial set included)."""
        return len(set(self.labelled))

    def add(self, ids: Sequence[int]) -> None:
        chosen = set(ids)
        if not chosen <= set(self.pool):
            raise ValueError(f"selected ids {sorted(chosen - set(self.pool))} are not in the pool")
        self.labelled += list(ids)
        if self.policy == "remove":
            self.pool = [i for i in self.pool if i not in chosen]


@dataclass
class Iteration:
    """What one iteration produced: its record, the pool ``[N]`` it scored and, if it
    scored, one score per pool patch ``[N]`` (float64)."""

    record: dict[str, Any]
    pool: np.ndarray
    scores: np.ndarray | None = None


@dataclass(frozen=True)
class Chunk:
    """One scored chunk of the pool at ``iteration``: patch ``ids`` ``[k]``, their
    :class:`Scores` (maps ``[k, H, W]`` or ``None``) and MC statistics (or ``None``);
    ``pool_size`` is the size of the whole pool being scored."""

    iteration: int
    pool_size: int
    ids: np.ndarray
    scores: Scores
    stats: McStats | None


def score_pool(
    learner: Learner,
    strategy: Strategy,
    pool: np.ndarray,
    iteration: int,
    mc_seed: int,
    rng: np.random.Generator,
    chunk: int,
    on_chunk: Callable[[Chunk], None],
    labelled: np.ndarray | None = None,
    images: torch.Tensor | None = None,
) -> np.ndarray:
    """Ranking scores ``[N]`` of the ``pool`` ids: computed ``chunk`` patches at a time (the
    whole pool at once for a strategy without MC statistics; each chunk goes to ``on_chunk``
    and is then dropped), then finalised by the strategy with the ``labelled`` ids and the
    ``images`` of every patch (:class:`~activeseg.acquisition.PoolScores`)."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    size = chunk if strategy.needs_mc else max(len(pool), 1)
    out = np.empty(len(pool), dtype=np.float64)  # allocated first: chunks leave no holes
    for start in range(0, len(pool), size):
        ids = pool[start : start + size]
        stats = learner.statistics(ids, mc_seed) if strategy.needs_mc else None
        scores = strategy.score(stats, len(ids), rng)
        on_chunk(Chunk(iteration, len(pool), ids, scores, stats))
        out[start : start + len(ids)] = scores.scores
    done = np.empty(0, dtype=np.int64) if labelled is None else labelled
    features = learner.features(pool) if getattr(strategy, "needs_features", False) else None
    passed = PoolScores(pool, out, done, images, features)
    final = np.asarray(strategy.finalize(passed), dtype=np.float64)
    if final.shape != out.shape:
        raise ValueError(f"{strategy.name}.finalize returned {final.shape}, not {out.shape}")
    return final


def resume_state(
    initial: Sequence[int],
    pool: Sequence[int],
    records: list[dict[str, Any]],
    policy: str = "remove",
) -> LoopState:
    """The state after the iterations recorded in ``records`` (in order)."""
    state = LoopState(list(initial), list(pool), policy)
    for n, record in enumerate(records):
        if record["iteration"] != n or record["labelled"] != state.labelled:
            raise ValueError(f"records are not a consistent sequence at iteration {n}")
        state.add(record["selected"])
    return state


def run(
    learner: Learner,
    oracle: Oracle,
    strategy: Strategy,
    state: LoopState,
    iterations: int,
    query_size: int,
    seed: int,
    start: int = 0,
    on_iteration: Callable[[Iteration], None] = lambda it: None,
    chunk: int = 256,
    on_chunk: Callable[[Chunk], None] = lambda c: None,
    select: Callable[[np.ndarray, int, np.random.Generator], np.ndarray] = select_top_k,
    images: torch.Tensor | None = None,
) -> LoopState:
    """Run iterations ``start .. iterations`` (the last one trains and evaluates only).

    Iteration ``i`` trains on ``state.labelled``, evaluates on the test set and, if
    ``i < iterations``, scores the pool ``chunk`` patches at a time (:func:`score_pool`;
    each :class:`Chunk` goes to ``on_chunk``) and selects ``query_size`` pool patches, which
    the oracle labels for iteration ``i + 1``. ``on_iteration`` receives each
    :class:`Iteration` (to persist it) after its chunks and before the state advances.
    ``select`` picks positions ``[k]`` from the scores (top-k or stochastic batches, see
    :func:`activeseg.acquisition.get_selection`); ``images`` (every patch's image by id) is
    handed to the strategy's ``finalize``.
    """
    for i in range(start, iterations + 1):
        labelled = np.asarray(state.labelled, dtype=np.int64)
        t0 = time.perf_counter()
        train_info = learner.fit(labelled, oracle.reveal(labelled), derive_seed(seed, i, "train"))
        t1 = time.perf_counter()
        metrics = learner.evaluate()
        eval_parts = metrics.pop("eval_seconds", {})
        t2 = time.perf_counter()
        pool = np.asarray(state.pool, dtype=np.int64)
        scores: np.ndarray | None = None
        selected: list[int] = []
        selected_scores: list[float] = []
        if i < iterations:
            rng = numpy_generator(derive_seed(seed, i, "select"))
            mc_seed = derive_seed(seed, i, "mc")
            scores = score_pool(
                learner, strategy, pool, i, mc_seed, rng, chunk, on_chunk, labelled, images
            )
            chosen = select(scores, query_size, rng)
            selected = pool[chosen].tolist()
            selected_scores = scores[chosen].tolist()
        t3 = time.perf_counter()
        record = {
            "strategy": strategy.name,
            "iteration": i,
            "n_labelled": len(state.labelled),
            "n_annotated": state.n_annotated,
            "labelled": list(state.labelled),
            "selected": selected,
            "selected_scores": selected_scores,
            "pool_size": len(pool),
            **metrics,
            **train_info,
            "seconds": {"train": t1 - t0, "eval": t2 - t1, "score": t3 - t2, **eval_parts},
        }
        on_iteration(Iteration(record, pool, scores))
        if selected:
            state.add(selected)
    return state
