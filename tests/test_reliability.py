"""Reliability: reproducible runs without global RNG state, scores independent of the pool's
chunking, a diverged training that keeps the finished iterations, a model predicting an empty
mask, leftover temporaries, the lock of a killed process and the streamed maps file."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from activeseg import learners
from activeseg.acquisition import get_strategy, select_top_k
from activeseg.config import Config, with_overrides
from activeseg.data.prepare import prepare
from activeseg.errors import TrainingDiverged, UserError
from activeseg.files import read_records
from activeseg.learners import ModelLearner
from activeseg.loop import score_pool
from activeseg.model import UNet
from activeseg.runtime import numpy_generator, resolve
from activeseg.simulation import simulate, tasks
from activeseg.simulation.rundir import MapsWriter, RunDirectory
from activeseg.simulation.tasks import learner_data

SRC = Path(__file__).resolve().parents[1] / "src"


def run_quietly(config: Config, out: Path, resume: bool = False) -> Path:
    return simulate(config, out, resume=resume, progress=False, log=lambda line: None)


def run_contents(run: Path) -> dict[str, Any]:
    """Everything a run wrote except wall-clock timings: records, upper bound, split, the
    checkpoints' weights and every map array."""
    out: dict[str, Any] = {}
    for path in sorted(run.glob("*.jsonl")):
        out[path.name] = [
            {k: v for k, v in r.items() if k != "seconds"} for r in read_records(path)
        ]
    out["split"] = json.loads((run / "split.json").read_text())
    for path in sorted((run / "checkpoints").glob("*.pt")):
        state = torch.load(path)["models"][0]
        out[path.name] = {k: v.numpy().tobytes() for k, v in state.items()}
    for path in sorted((run / "maps").glob("*.npz")):
        with np.load(path) as maps:
            out[path.name] = {k: maps[k].tobytes() for k in sorted(maps.files)}
    return out


def global_rng_states() -> tuple[Any, ...]:
    return (
        torch.random.get_rng_state().clone(),
        np.random.get_state()[1].copy(),  # noqa: NPY002 - checking that nobody uses it
        random.getstate(),
    )


def reseed_globals(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - a run must not depend on it
    random.seed(seed)


@pytest.fixture(scope="module")
def reference(tiny_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    reseed_globals(1)
    return run_quietly(tiny_config, tmp_path_factory.mktemp("ref") / "run")


def test_same_config_and_seed_give_the_same_run_whatever_the_global_rng_state(
    reference: Path, tiny_config: Config, tmp_path: Path
) -> None:
    reseed_globals(2)
    before = global_rng_states()
    again = run_quietly(tiny_config, tmp_path / "again")
    after = global_rng_states()
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert before[2] == after[2]  # no global RNG was drawn from, or reseeded
    assert run_contents(again) == run_contents(reference)


def test_another_seed_gives_another_run(
    reference: Path, tiny_config: Config, tmp_path: Path
) -> None:
    other = run_quietly(with_overrides(tiny_config, {"loop.seed": 1}), tmp_path / "other")
    a, b = run_contents(reference), run_contents(other)
    assert a["split"] == b["split"]  # fixed by data.split_seed
    assert a["records-random-rep0.jsonl"] != b["records-random-rep0.jsonl"]


def test_scores_maps_and_selections_do_not_depend_on_the_chunk_size(
    reference: Path, tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tasks.pool_chunk(64) >= 6  # the reference scored its pool in one chunk
    monkeypatch.setattr(tasks, "pool_chunk", lambda patch_size: 1)
    chunked = run_quietly(tiny_config, tmp_path / "chunked")
    assert run_contents(chunked) == run_contents(reference)


def test_save_maps_false_writes_no_maps_and_the_same_records(
    reference: Path, tiny_config: Config, tmp_path: Path
) -> None:
    config = with_overrides(tiny_config, {"loop.save_maps": False})
    run = run_quietly(config, tmp_path / "nomaps")
    assert not (run / "maps").exists() or not any((run / "maps").iterdir())
    a, b = run_contents(run), run_contents(reference)
    assert {k: v for k, v in a.items() if not k.endswith(".npz")} == {
        k: v for k, v in b.items() if not k.endswith(".npz")
    }


def test_disk_usage_is_reported_in_one_line(tiny_config: Config, tmp_path: Path) -> None:
    lines: list[str] = []
    config = with_overrides(tiny_config, {"loop.repetitions": 1, "loop.iterations": 0})
    simulate(config, tmp_path / "run", progress=False, log=lines.append)
    assert lines[-1].startswith(f"run directory {tmp_path / 'run'}: ")
    assert lines[-1].endswith(" files") and " MB in " in lines[-1]


# --- numerical faults --------------------------------------------------------------------


def diverge_at_iteration_one(monkeypatch: pytest.MonkeyPatch, n_initial: int) -> None:
    """Make the first training on ``n_initial + 1`` patches (iteration 1, k = 1) of the
    simulation use lr = 1e12."""
    original = learners.fit
    done = False

    def fit(*args: Any, **kwargs: Any) -> Any:
        nonlocal done
        if len(args[1].images) == n_initial + 1 and not done:  # fit(model, train, val, cfg, ...)
            done = True
            args = (*args[:3], dataclasses.replace(args[3], lr=1e12), *args[4:])
        return original(*args, **kwargs)

    monkeypatch.setattr(learners, "fit", fit)


def test_a_diverged_training_stops_with_a_clear_error_and_keeps_finished_iterations(
    reference: Path, tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    config = with_overrides(tiny_config, {"loop.strategies": "std_edt"})
    with monkeypatch.context() as patch:
        diverge_at_iteration_one(patch, config.data.n_initial)  # repetition 0
        with pytest.raises(TrainingDiverged) as info:
            run_quietly(config, out)
    message = str(info.value)
    assert message.startswith("std_edt repetition 0 iteration 1: training diverged: loss is")
    assert "lower train.lr" in message and "start a new --out" in message
    assert [r["iteration"] for r in read_records(out / "records-std_edt-rep0.jsonl")] == [0]
    assert torch.load(out / "checkpoints" / "std_edt-rep0.pt")["iteration"] == 0
    assert sorted(p.name for p in (out / "maps").iterdir()) == ["std_edt-rep0-it00.npz"]
    assert not list(out.rglob("*.tmp"))
    # What was kept is exactly what an undisturbed run wrote, and the run can be finished.
    kept = run_contents(out)["records-std_edt-rep0.jsonl"]
    assert kept == run_contents(reference)["records-std_edt-rep0.jsonl"][:1]
    with pytest.raises(UserError, match=r"other settings \(train.lr: 0.01 -> 0.001\)"):
        run_quietly(with_overrides(config, {"train.lr": 1e-3}), out, resume=True)
    run_quietly(config, out, resume=True)
    expected = run_contents(reference)
    assert run_contents(out)["records-std_edt-rep1.jsonl"] == expected["records-std_edt-rep1.jsonl"]


def empty_predictor(learner: ModelLearner) -> None:
    """Give ``learner`` a model whose every output is background (logit -30)."""
    model = learner.new_model(0)
    with torch.no_grad():
        for p in model.head.parameters():
            p.zero_()
        model.head.bias.fill_(-30.0)
    model.eval()
    learner.models = [model]


def test_a_model_predicting_an_empty_mask_gets_defined_metrics_and_scores(
    tiny_config: Config,
) -> None:
    data = prepare(tiny_config.data)
    test = data.split.test
    data.masks[test[0]] = 0  # one test patch without myelin: its Dice is 0/0 = 1
    learner = ModelLearner(learner_data(data), tiny_config, resolve("cpu", "fp32"), progress=False)
    empty_predictor(learner)
    metrics = learner.evaluate()
    json.dumps(metrics, allow_nan=False)  # a record can hold it
    assert metrics["test_dice"] == 0.0 and metrics["test_sensitivity"] == 0.0
    assert metrics["test_precision"] == 1.0  # 0/0: nothing predicted, nothing wrong
    assert metrics["test_specificity"] == 1.0
    per_patch = metrics["test_dice_per_patch"]
    assert per_patch[0] == 1.0 and all(d == 0.0 for d in per_patch[1:])
    pool = data.split.pool
    for name in ("std_sum", "std_mean", "std_edt", "random"):
        scores = score_pool(
            learner, get_strategy(name), pool, 0, 7, numpy_generator(3), chunk=4,
            on_chunk=lambda c: None,
        )  # fmt: skip
        assert scores.shape == (len(pool),) and np.isfinite(scores).all()
        if name != "random":
            assert (scores == 0).all()  # no uncertainty anywhere
        chosen = select_top_k(scores, 2, numpy_generator(3))
        assert len(set(chosen.tolist())) == 2


# --- crashes: temporaries and the lock ----------------------------------------------------


def test_leftover_temporaries_are_ignored_and_removed_on_resume(
    reference: Path, tiny_config: Config, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    config = with_overrides(tiny_config, {"loop.iterations": 1})
    run_quietly(config, out)
    before = run_contents(out)
    junk = [
        out / ".records-std_edt-rep0.jsonl.x1y2.tmp",
        out / "checkpoints" / ".std_edt-rep0.pt.x1y2.tmp",
        out / "maps" / ".std_edt-rep0-it00.npz.x1y2.tmp" / "std.npy",
    ]
    for path in junk:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    run_quietly(config, out, resume=True)
    assert not list(out.rglob("*.tmp"))
    assert run_contents(out) == before


LOCK_HOLDER = """
import sys, time
from pathlib import Path
from activeseg.presets import preset
from activeseg.simulation.rundir import RunDirectory
run = RunDirectory(Path(sys.argv[1]), preset("demo"), resume=True)
print("locked", flush=True)
time.sleep(120)
"""


def test_the_lock_of_a_killed_process_does_not_block_the_next_one(tmp_path: Path) -> None:
    from activeseg.presets import preset

    env = {**os.environ, "PYTHONPATH": str(SRC)}
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(tmp_path)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
        with pytest.raises(UserError, match="in use by another activeseg process"):
            RunDirectory(tmp_path, preset("demo"), resume=True)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
    start = time.monotonic()
    RunDirectory(tmp_path, preset("demo"), resume=True).close()  # at once: the kernel freed it
    assert time.monotonic() - start < 1.0


# --- the streamed maps file ---------------------------------------------------------------


def test_maps_written_in_chunks_read_like_savez_compressed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = np.arange(10, 17)
    scores = rng.random(7)
    std = rng.random((7, 5, 3)).astype(np.float32)
    writer = MapsWriter(tmp_path / "m.npz", 7)
    for lo, hi in ((0, 3), (3, 4), (4, 7)):
        writer.add(ids[lo:hi], scores[lo:hi], std=std[lo:hi], map=2 * std[lo:hi])
    assert not (tmp_path / "m.npz").exists()  # nothing under the final name before commit
    writer.commit()
    with np.load(tmp_path / "m.npz") as maps:
        assert sorted(maps.files) == ["ids", "map", "scores", "std"]
        assert maps["ids"].tolist() == ids.tolist() and maps["scores"].tolist() == scores.tolist()
        assert maps["std"].dtype == np.float16
        np.testing.assert_array_equal(maps["std"], std.astype(np.float16))
        np.testing.assert_array_equal(maps["map"], (2 * std).astype(np.float16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_an_incomplete_maps_writer_is_refused_and_discarded_without_trace(tmp_path: Path) -> None:
    writer = MapsWriter(tmp_path / "m.npz", 3)
    writer.add(np.arange(2), np.zeros(2), std=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="2 of 3 patches"):
        writer.commit()
    with pytest.raises(ValueError, match="more patches"):
        writer.add(np.arange(2), np.zeros(2), std=np.zeros((2, 4, 4)))
    writer.discard()
    assert list(tmp_path.iterdir()) == []


def test_active_dropout_without_a_generator_refuses_the_global_rng() -> None:
    with torch.random.fork_rng(devices=[]):
        net = UNet(1, 1, depth=2, base_filters=2, dropout=0.5).train()
    state = torch.random.get_rng_state()
    with pytest.raises(RuntimeError, match="no generator; run the model inside seeded_dropout"):
        net(torch.zeros(1, 1, 8, 8))
    assert torch.equal(torch.random.get_rng_state(), state)
    net.eval()(torch.zeros(1, 1, 8, 8))  # evaluation mode draws nothing


def test_a_full_disk_stops_with_one_line_and_exit_1_and_the_run_resumes(
    reference: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from conftest import TINY_OVERRIDES

    from activeseg import files
    from activeseg.cli import main
    from activeseg.simulation import rundir

    original = files.atomic_write_bytes
    writes = 0

    def fills_up(path: Path, data: bytes) -> None:
        nonlocal writes
        writes += 1
        if writes == 7:
            raise OSError(28, "No space left on device", str(path))
        original(path, data)

    sets = [a for k, v in TINY_OVERRIDES.items() for a in ("--set", f"{k}={v}")]
    args = ["simulate", "--preset", "demo", "--quiet", "--out", str(tmp_path / "run"), *sets]
    with monkeypatch.context() as patch:
        patch.setattr(files, "atomic_write_bytes", fills_up)
        patch.setattr(rundir, "atomic_write_bytes", fills_up)
        assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "--resume" in err[0]
    assert main([*args, "--resume"]) == 0
    assert run_contents(tmp_path / "run") == run_contents(reference)
