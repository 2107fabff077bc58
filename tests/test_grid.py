"""Grid execution without Ray: a local process pool gives the records of the sequential run;
resuming a grid reruns only the unfinished runs; bad execution options are user errors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import run_records

from activeseg.cli import main
from activeseg.config import Config, with_overrides
from activeseg.errors import UserError
from activeseg.files import append_json_line, read_records
from activeseg.simulation import simulate
from activeseg.simulation.executors import Execution, InProcess, make_executor
from activeseg.simulation.rundir import RunDirectory
from activeseg.simulation.tasks import pending_tasks


def copy_run(run: Path, out: Path) -> Path:
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("run.lock"))
    return out


def test_a_process_pool_gives_the_records_of_the_sequential_run(
    tiny_run: Path, tiny_config: Config, tmp_path: Path
) -> None:
    execution = Execution(workers=2, cpus_per_run=1)  # the reference ran with 1 thread
    out = simulate(tiny_config, tmp_path / "pool", False, False, lambda line: None, execution)
    assert run_records(out) == run_records(tiny_run)
    assert sorted(p.name for p in (out / "maps").iterdir()) == sorted(
        p.name for p in (tiny_run / "maps").iterdir()
    )
    assert {r["torch_threads"] for r in read_records(out / "records-random-rep0.jsonl")} == {1}
    # the workers' iteration lines reach the run's log.txt: 2 strategies x 2 reps x 3
    lines = (out / "log.txt").read_text().splitlines()
    assert len([line for line in lines if re.search(r" rep \d it +\d: ", line)]) == 12


def test_resuming_a_grid_reruns_only_the_unfinished_runs(
    tiny_run: Path, tiny_config: Config, tmp_path: Path
) -> None:
    out = copy_run(tiny_run, tmp_path / "partial")
    (out / "records-std_edt-rep1.jsonl").unlink()
    first = (out / "records-random-rep0.jsonl").read_text().splitlines()[0]
    (out / "records-random-rep0.jsonl").write_text(first + "\n")
    upper = read_records(out / "upper_bound.jsonl")
    (out / "upper_bound.jsonl").unlink()
    append_json_line(out / "upper_bound.jsonl", upper[0])
    finished = (out / "records-std_edt-rep0.jsonl").read_bytes()

    with RunDirectory(out, tiny_config, resume=True) as run:
        tasks, done = pending_tasks(run, tiny_config)
    assert [(t.repetition, t.strategy) for t in tasks] == [
        (0, "random"),
        (1, None),
        (1, "std_edt"),
    ]
    assert done == 1 + 1 + 3 + 3  # upper bound 0, random-rep0 it 0, std_edt-rep0, random-rep1

    execution = Execution(workers=2, cpus_per_run=1)
    simulate(tiny_config, out, True, False, lambda line: None, execution)
    assert run_records(out) == run_records(tiny_run)
    assert (out / "records-std_edt-rep0.jsonl").read_bytes() == finished  # not rerun


def test_committee_runs_on_a_process_pool_give_the_sequential_records(
    tiny_config: Config, tmp_path: Path
) -> None:
    config = with_overrides(
        tiny_config,
        {"loop.strategies": ["bald@ensemble", "svgd_mi"], "loop.repetitions": 1,
         "loop.upper_bound": False, "committee.members": 2},
    )  # fmt: skip
    sequential = simulate(config, tmp_path / "seq", False, False, lambda line: None)
    execution = Execution(workers=2, cpus_per_run=1)
    pool = simulate(config, tmp_path / "pool", False, False, lambda line: None, execution)
    records = run_records(pool)
    assert records == run_records(sequential)
    svgd = records["records-svgd_mi-rep0.jsonl"]
    assert len(svgd) == config.loop.iterations + 1 and "svgd" in svgd[-1]
    assert len(records["records-bald@ensemble-rep0.jsonl"][-1]["test_member_dice"]) == 2


@pytest.mark.parametrize(
    ("execution", "message"),
    [
        ({"workers": 0}, "--workers must be >= 1"),
        ({"workers": 2, "ray": "auto"}, "--workers and --ray exclude each other"),
        ({"shards": 2}, "--shards needs --ray"),
        ({"cpus_per_run": 0}, "--cpus-per-run must be >= 1"),
        ({"gpus_per_run": 1}, "--gpus-per-run needs --ray"),
    ],
)
def test_inconsistent_execution_options_are_user_errors(
    execution: dict[str, object], message: str
) -> None:
    with pytest.raises(UserError, match=message):
        Execution(**execution)  # type: ignore[arg-type]


def test_the_command_line_rejects_workers_with_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["simulate", "--workers", "2", "--ray", "auto", "--out", str(tmp_path / "r")])
    assert code == 2
    assert "--workers and --ray exclude each other" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_threads_per_run_follow_the_workers() -> None:
    assert Execution().threads() is None  # this process's setting, as before grids
    assert Execution(cpus_per_run=3).threads() == 3
    assert Execution(ray="auto").threads() == 1
    assert isinstance(make_executor(Execution()), InProcess)
