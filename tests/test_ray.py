"""Grid and scoring on a local Ray instance (2 CPUs, loopback only, started once for this
module): the grid gives the records of the sequential run, sharded MC scoring equals the
single-process scores bit for bit, and a worker killed mid-run is retried to completion.

Skipped without the optional extra (``pip install 'activeseg[ray]'``); CI installs it.
"""

from __future__ import annotations

import copy
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
from conftest import Phantom, Trained, run_records

from activeseg.config import Config, with_overrides
from activeseg.files import read_records
from activeseg.runtime import Runtime
from activeseg.scoring import mc_statistics
from activeseg.simulation import simulate
from activeseg.simulation.executors import Execution, start_local_ray

ray = pytest.importorskip(
    "ray", reason="the optional Ray extra is not installed: pip install 'activeseg[ray]'"
)
pytestmark = pytest.mark.ray

TIMEOUT = 600.0  # seconds one Ray call may take (275 s seen for the grid at load 10)
R = TypeVar("R")


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    start_local_ray(num_cpus=2)
    yield
    ray.shutdown()


def within(seconds: float, fn: Callable[[], R]) -> R:
    """``fn()``, failing the test (instead of hanging it) after ``seconds``."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"took longer than {seconds} s"
    if errors:
        raise errors[0]
    return result[0]


def quiet(config: Config, out: Path, execution: Execution, resume: bool = False) -> Path:
    return within(
        TIMEOUT, lambda: simulate(config, out, resume, False, lambda line: None, execution)
    )


def test_the_local_instance_listens_on_loopback_only() -> None:
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert ray.cluster_resources()["CPU"] == 2


def test_a_grid_on_ray_gives_the_records_of_the_sequential_run(
    tiny_run: Path, tiny_config: Config, tmp_path: Path
) -> None:
    out = quiet(tiny_config, tmp_path / "ray", Execution(ray="auto"))
    assert run_records(out) == run_records(tiny_run)
    assert sorted(p.name for p in (out / "maps").iterdir()) == sorted(
        p.name for p in (tiny_run / "maps").iterdir()
    )


def test_sharded_scoring_equals_single_process_scoring(
    trained: Trained, phantom: Phantom, runtime: Runtime
) -> None:
    from activeseg.simulation.shards import ShardedScorer

    ids = phantom.test[[5, 0, 9, 3, 12]]  # 5 patches, any order: uneven shards of 3 and 2
    model = copy.deepcopy(trained.model)
    expected = mc_statistics(model, phantom.images[ids], ids.tolist(), 4, 3, 7, runtime)
    with ShardedScorer(phantom.images, 2, runtime, threads=1) as scorer:
        scorer.set_model(trained.model)
        got = within(TIMEOUT, lambda: scorer.statistics(ids, 4, 3, 7))
        other_seed = scorer.statistics(ids, 4, 3, 8)
    assert got.samples == 4
    assert torch.equal(got.mean, expected.mean)
    assert torch.equal(got.std, expected.std)
    assert got.expected_entropy is not None and expected.expected_entropy is not None
    assert torch.equal(got.expected_entropy, expected.expected_entropy)
    assert not torch.equal(other_seed.std, expected.std)  # the seed reaches the actors


def test_a_simulation_with_sharded_scoring_gives_the_same_records(
    tiny_run: Path, tiny_config: Config, tmp_path: Path
) -> None:
    config = with_overrides(
        tiny_config,
        {"loop.strategies": "std_edt", "loop.repetitions": 1, "loop.upper_bound": False},
    )
    out = quiet(config, tmp_path / "sharded", Execution(ray="auto", shards=2))
    name = "records-std_edt-rep0.jsonl"
    assert run_records(out)[name] == run_records(tiny_run)[name]


def running_task_pids() -> list[int]:
    """Ray worker processes that are executing a grid task (Ray titles them by function)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if proc.name.isdigit() and cmdline.startswith(b"ray::") and b"call_with_threads" in cmdline:
            pids.append(int(proc.name))
    return pids


def test_a_worker_killed_mid_run_is_retried_and_the_grid_completes(
    tiny_config: Config, tmp_path: Path
) -> None:
    config = with_overrides(
        tiny_config,
        {
            "loop.strategies": "random",
            "loop.repetitions": 1,
            "loop.upper_bound": False,
            "train.epochs": 40,  # a few seconds per run: time to kill it after iteration 0
        },
    )
    reference = quiet(config, tmp_path / "reference", Execution(cpus_per_run=1))
    out = tmp_path / "killed"
    records = out / "records-random-rep0.jsonl"
    killed: list[int] = []

    def kill_after_first_record() -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and not killed:
            if records.exists() and len(read_records(records)) == 1:
                for pid in running_task_pids():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.01)

    killer = threading.Thread(target=kill_after_first_record, daemon=True)
    killer.start()
    quiet(config, out, Execution(ray="auto"))
    killer.join(TIMEOUT)
    assert killed, "no running task was found to kill"
    assert [r["iteration"] for r in read_records(records)] == [0, 1, 2]
    assert run_records(out) == run_records(reference)
    assert np.all([not p.name.endswith(".tmp") for p in out.rglob("*")])
