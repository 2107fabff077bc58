"""The active-learning loop with a fake learner and oracle: what it trains on, what it scores,
how the pool and the labelled set change, the records it emits, and resuming."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from activeseg.acquisition import (
    PoolScores,
    Scores,
    Strategy,
    get_strategy,
    select_stochastic_batch,
)
from activeseg.errors import UserError
from activeseg.loop import Chunk, Iteration, LoopState, resume_state, run
from activeseg.scoring import McStats

N_PATCHES = 40
INITIAL = [0, 1, 2]
POOL = list(range(3, 30))
VAL = list(range(30, 35))
TEST = list(range(35, 40))
SIDE = 4


def informativeness(pid: int) -> float:
    """The fake std of patch ``pid``: a known ranking with ties (ids equal mod 7)."""
    return float(pid % 7)


class FakeLearner:
    """Records every call; evaluates to a function of the labelled set; its MC statistics
    are a constant std of ``informativeness(id)`` per patch."""

    def __init__(self) -> None:
        self.fits: list[list[int]] = []
        self.fit_masks: list[np.ndarray] = []
        self.seeds: list[int] = []
        self.scored: list[list[int]] = []
        self.stat_seeds: list[int] = []

    def fit(self, ids: np.ndarray, masks: np.ndarray, seed: int) -> dict[str, Any]:
        self.fits.append(ids.tolist())
        self.fit_masks.append(masks)
        self.seeds.append(seed)
        return {"val_dice": 0.5, "train_steps": 10 * len(ids)}

    def evaluate(self) -> dict[str, Any]:
        return {"test_dice": len(self.fits[-1]) / 100}

    def statistics(self, ids: np.ndarray, seed: int) -> McStats:
        self.scored.append(ids.tolist())
        self.stat_seeds.append(seed)
        std = torch.tensor([informativeness(int(i)) for i in ids], dtype=torch.float32)
        std = std.view(-1, 1, 1, 1).expand(-1, 1, SIDE, SIDE).clone()
        return McStats(torch.full_like(std, 0.7), std, samples=2)


class FakeOracle:
    """Masks whose pixels hold the patch id; refuses to reveal validation or test patches."""

    def __init__(self) -> None:
        self.masks = np.arange(N_PATCHES, dtype=np.int64)[:, None, None, None] * np.ones(
            (1, 1, SIDE, SIDE), dtype=np.int64
        )
        self.revealed: list[list[int]] = []

    def reveal(self, ids: np.ndarray) -> np.ndarray:
        leaked = set(ids.tolist()) & set(VAL + TEST)
        assert not leaked, f"oracle asked for held-out patches {leaked}"
        self.revealed.append(ids.tolist())
        return self.masks[ids]


def drive(
    strategy: Strategy,
    iterations: int = 4,
    k: int = 1,
    seed: int = 0,
    learner: FakeLearner | None = None,
    state: LoopState | None = None,
    start: int = 0,
) -> tuple[FakeLearner, LoopState, list[Iteration]]:
    learner = FakeLearner() if learner is None else learner
    state = LoopState(list(INITIAL), list(POOL)) if state is None else state
    seen: list[Iteration] = []
    final = run(
        learner, FakeOracle(), strategy, state, iterations, k, seed, start, on_iteration=seen.append
    )
    return learner, final, seen


def without_timings(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "seconds"}


@pytest.mark.parametrize("name", ["random", "std_sum", "std_edt"])
def test_training_sees_only_initial_and_selected_patches(name: str) -> None:
    learner, state, seen = drive(get_strategy(name), iterations=5, k=2)
    selected = [i for it in seen for i in it.record["selected"]]
    for n, ids in enumerate(learner.fits):
        assert ids == INITIAL + selected[: 2 * n]
        assert not set(ids) & set(VAL + TEST)
    for ids, masks in zip(learner.fits, learner.fit_masks, strict=True):
        assert masks.shape == (len(ids), 1, SIDE, SIDE)
        assert masks[:, 0, 0, 0].tolist() == ids  # the oracle's masks of exactly those ids
    assert state.labelled == INITIAL + selected


def test_only_the_current_pool_is_scored() -> None:
    learner, _, seen = drive(get_strategy("std_sum"), iterations=4, k=2)
    assert len(learner.scored) == 4
    selected: list[int] = []
    for ids, it in zip(learner.scored, seen[:-1], strict=True):
        assert ids == it.pool.tolist() == [i for i in POOL if i not in selected]
        assert not set(ids) & set(VAL + TEST + it.record["labelled"])
        selected += it.record["selected"]


@pytest.mark.parametrize("k", [1, 3])
def test_pool_shrinks_and_labelled_set_grows_by_k(k: int) -> None:
    _, state, seen = drive(get_strategy("std_sum"), iterations=4, k=k)
    records = [it.record for it in seen]
    assert [r["pool_size"] for r in records] == [len(POOL) - k * i for i in range(5)]
    assert [r["n_labelled"] for r in records] == [len(INITIAL) + k * i for i in range(5)]
    assert [len(r["selected"]) for r in records] == [k] * 4 + [0]
    assert len(state.pool) == len(POOL) - 4 * k
    assert sorted(state.labelled + state.pool) == sorted(INITIAL + POOL)


def test_std_strategy_selects_the_most_uncertain_pool_patches() -> None:
    _, _, seen = drive(get_strategy("std_sum"), iterations=3, k=3)
    remaining = set(POOL)
    for it in seen[:-1]:
        chosen = it.record["selected"]
        best = sorted((informativeness(i) for i in remaining), reverse=True)[:3]
        assert [informativeness(i) for i in chosen] == best
        assert it.record["selected_scores"] == pytest.approx([16 * b for b in best])
        remaining -= set(chosen)


def test_random_strategy_never_asks_for_statistics() -> None:
    learner, _, seen = drive(get_strategy("random"), iterations=3)
    assert learner.scored == []
    assert all(it.scores is not None for it in seen[:-1])


def test_last_iteration_trains_and_evaluates_without_selecting() -> None:
    learner, _, seen = drive(get_strategy("std_sum"), iterations=3)
    assert len(learner.fits) == 4 and len(learner.scored) == 3
    last = seen[-1]
    assert last.record["iteration"] == 3
    assert last.record["selected"] == [] and last.scores is None


def test_zero_iterations_only_train_once() -> None:
    learner, state, seen = drive(get_strategy("std_sum"), iterations=0)
    assert len(learner.fits) == 1 and len(seen) == 1
    assert state.labelled == INITIAL


def test_records_hold_the_expected_fields() -> None:
    _, _, seen = drive(get_strategy("std_edt"), iterations=2, k=2)
    record = seen[0].record
    assert {
        "strategy",
        "iteration",
        "n_labelled",
        "labelled",
        "selected",
        "selected_scores",
        "pool_size",
        "test_dice",
        "val_dice",
        "train_steps",
        "seconds",
    } <= set(record)
    assert record["strategy"] == "std_edt"
    assert [it.record["iteration"] for it in seen] == [0, 1, 2]
    assert record["test_dice"] == len(INITIAL) / 100
    assert set(record["seconds"]) == {"train", "eval", "score"}
    assert all(v >= 0 for v in record["seconds"].values())
    assert all(type(i) is int for i in record["selected"] + record["labelled"])
    assert seen[0].scores is not None and seen[0].scores.shape == (len(POOL),)


def test_records_do_not_change_when_the_state_advances() -> None:
    _, _, seen = drive(get_strategy("std_sum"), iterations=2)
    assert seen[0].record["labelled"] == INITIAL


def test_same_seed_same_run_and_seeds_depend_on_iteration_not_strategy() -> None:
    a, _, seen_a = drive(get_strategy("random"), iterations=3, seed=5)
    b, _, seen_b = drive(get_strategy("random"), iterations=3, seed=5)
    c, _, seen_c = drive(get_strategy("std_edt"), iterations=3, seed=5)
    d, _, _ = drive(get_strategy("random"), iterations=3, seed=6)
    assert [without_timings(it.record) for it in seen_a] == [
        without_timings(it.record) for it in seen_b
    ]
    assert a.seeds == b.seeds == c.seeds  # iteration i trains from the same seed everywhere
    assert len(set(a.seeds)) == 4 and not set(a.seeds) & set(d.seeds)
    assert seen_a[0].record["test_dice"] == seen_c[0].record["test_dice"]


def test_random_selection_depends_on_the_seed() -> None:
    picks = {
        tuple(drive(get_strategy("random"), iterations=2, seed=s)[1].labelled) for s in range(6)
    }
    assert len(picks) > 1


def test_resume_state_replays_the_records() -> None:
    _, state, seen = drive(get_strategy("std_sum"), iterations=4, k=2)
    records = [it.record for it in seen]
    assert resume_state(INITIAL, POOL, []) == LoopState(INITIAL, POOL)
    after_two = resume_state(INITIAL, POOL, records[:2])
    assert after_two.labelled == records[2]["labelled"]
    assert after_two.pool == [i for i in POOL if i not in after_two.labelled]
    assert resume_state(INITIAL, POOL, records) == state


@pytest.mark.parametrize("done", [1, 3])
def test_a_resumed_loop_continues_like_an_uninterrupted_one(done: int) -> None:
    strategy = get_strategy("std_edt")
    uninterrupted, _, full = drive(strategy, iterations=4, k=2, seed=9)
    records = [it.record for it in full]
    learner, state, rest = drive(
        strategy,
        iterations=4,
        k=2,
        seed=9,
        state=resume_state(INITIAL, POOL, records[:done]),
        start=done,
    )
    assert [it.record["iteration"] for it in rest] == list(range(done, 5))
    assert [without_timings(r) for r in records[done:]] == [
        without_timings(it.record) for it in rest
    ]
    assert state.labelled == records[-1]["labelled"]
    assert learner.seeds == uninterrupted.seeds[done:]
    assert learner.stat_seeds == uninterrupted.stat_seeds[done:]
    assert learner.fits == uninterrupted.fits[done:]


def test_resume_state_rejects_inconsistent_records() -> None:
    _, _, seen = drive(get_strategy("std_sum"), iterations=3)
    records = [it.record for it in seen]
    with pytest.raises(ValueError, match="not a consistent sequence at iteration 0"):
        resume_state(INITIAL, POOL, records[1:])
    tampered = [dict(records[0]), dict(records[1], labelled=[0, 1, 2, 99])]
    with pytest.raises(ValueError, match="at iteration 1"):
        resume_state(INITIAL, POOL, tampered)


def test_state_rejects_ids_outside_the_pool() -> None:
    state = LoopState([0], [1, 2])
    with pytest.raises(ValueError, match=r"selected ids \[0, 7\] are not in the pool"):
        state.add([0, 7])
    assert state == LoopState([0], [1, 2])


def test_query_larger_than_the_pool_is_a_user_error() -> None:
    state = LoopState([0], [1, 2])
    with pytest.raises(UserError, match="cannot select 3 patches from a pool of 2"):
        run(FakeLearner(), FakeOracle(), get_strategy("random"), state, 1, 3, seed=0)


@pytest.mark.parametrize("name", ["random", "std_sum", "std_edt"])
def test_selections_and_scores_do_not_depend_on_the_chunk_size(name: str) -> None:
    def chunked(chunk: int) -> tuple[list[Iteration], list[Chunk]]:
        seen: list[Iteration] = []
        chunks: list[Chunk] = []
        state = LoopState(list(INITIAL), list(POOL))
        run(FakeLearner(), FakeOracle(), get_strategy(name), state, 3, 2, 0,
            on_iteration=seen.append, chunk=chunk, on_chunk=chunks.append)  # fmt: skip
        return seen, chunks

    reference, _ = chunked(1000)
    for size in (1, 4):
        seen, chunks = chunked(size)
        assert [without_timings(it.record) for it in seen] == [
            without_timings(it.record) for it in reference
        ]
        for a, b in zip(seen[:-1], reference[:-1], strict=True):
            assert a.scores is not None and b.scores is not None
            np.testing.assert_array_equal(a.scores, b.scores)
        mc = get_strategy(name).needs_mc
        assert max(len(c.ids) for c in chunks) == (size if mc else len(POOL))
        for i, it in enumerate(seen[:-1]):  # the chunks of an iteration cover its pool in order
            ids = [pid for c in chunks if c.iteration == i for pid in c.ids.tolist()]
            assert ids == it.pool.tolist()
            assert all(c.pool_size == len(it.pool) for c in chunks if c.iteration == i)


# --------------------------------------------------------------------------- finalize, policies


@dataclass(frozen=True)
class PoolLevelStrategy:
    """Scores every patch by its id in chunks; ``finalize`` ranks by distance to the mean id
    of the labelled set (a pool-level term no chunk can know) and records what it saw."""

    seen: list[tuple[list[int], list[float], list[int]]]
    name: str = "pool_level"
    needs_mc: bool = True
    committee: str | None = None

    def score(self, stats: McStats | None, n: int, rng: np.random.Generator) -> Scores:
        assert stats is not None
        return Scores(stats.std[:, 0, 0, 0].double().numpy())

    def finalize(self, pool: PoolScores) -> np.ndarray:
        self.seen.append((pool.ids.tolist(), pool.scores.tolist(), pool.labelled.tolist()))
        return -np.abs(pool.ids - pool.labelled.mean())


def test_finalize_sees_every_chunk_and_the_labelled_set_and_decides_the_ranking() -> None:
    seen: list[tuple[list[int], list[float], list[int]]] = []
    learner = FakeLearner()
    state = LoopState(list(INITIAL), list(POOL))
    records: list[Iteration] = []
    run(
        learner,
        FakeOracle(),
        PoolLevelStrategy(seen),
        state,
        2,
        1,
        0,
        on_iteration=records.append,
        chunk=4,
    )
    assert len(learner.scored[0]) == 4  # chunked
    ids, scores, labelled = seen[0]
    assert ids == POOL and scores == [informativeness(i) for i in POOL] and labelled == INITIAL
    assert records[0].record["selected"] == [3]  # closest to mean(0, 1, 2) = 1
    assert seen[1][2] == [*INITIAL, 3] and records[1].record["selected"] == [4]


def test_keep_policy_reselects_without_annotation_cost() -> None:
    """A fixed ranking under ``keep``: the best patch is chosen every time; the training set
    grows by k, the annotated set only once."""
    pool = list(range(3, 10))  # informativeness 3, 4, 5, 6, 0, 1, 2: no ties, best is 6
    learner, state, seen = drive(
        get_strategy("std_sum"), iterations=3, k=1, state=LoopState(list(INITIAL), pool, "keep")
    )
    chosen = [r.record["selected"][0] for r in seen[:-1]]
    assert chosen == [6, 6, 6]
    assert state.pool == pool
    assert [r.record["n_labelled"] for r in seen] == [3, 4, 5, 6]
    assert [r.record["n_annotated"] for r in seen] == [3, 4, 4, 4]
    assert learner.fits[-1] == INITIAL + chosen


def test_remove_policy_counts_annotated_like_labelled() -> None:
    _, _, seen = drive(get_strategy("std_sum"), iterations=3, k=2)
    assert [r.record["n_annotated"] for r in seen] == [r.record["n_labelled"] for r in seen]


def test_resume_under_keep_reproduces_the_state() -> None:
    _, state, seen = drive(
        get_strategy("std_sum"), iterations=3, state=LoopState(list(INITIAL), list(POOL), "keep")
    )
    again = resume_state(INITIAL, POOL, [s.record for s in seen[:-1]], "keep")
    assert again.labelled == state.labelled and again.pool == state.pool == POOL
    with pytest.raises(ValueError, match="pool policy 'drop'"):
        LoopState([], [], "drop")


def test_stochastic_selection_reaches_the_loop() -> None:
    """With one group per query the loop picks random k-groups, not the top k."""
    picks = set()
    for seed in range(8):
        learner = FakeLearner()
        state = LoopState(list(INITIAL), list(POOL))
        seen: list[Iteration] = []
        run(
            learner, FakeOracle(), get_strategy("std_sum"), state, 1, 3, seed,
            on_iteration=seen.append,
            select=lambda s, k, rng: select_stochastic_batch(s, k, rng, groups=1),
        )  # fmt: skip
        chosen = seen[0].record["selected"]
        assert len(set(chosen)) == 3 and set(chosen) <= set(POOL)
        picks.add(tuple(sorted(chosen)))
    assert len(picks) > 4
