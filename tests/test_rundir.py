"""The run directory: lock, config check on resume, records, split, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from activeseg import files
from activeseg.config import Config, load_yaml, with_overrides
from activeseg.errors import UserError
from activeseg.files import RECORD_SCHEMA, atomic_write_text, read_records
from activeseg.presets import preset
from activeseg.simulation.rundir import RunDirectory

CONFIG = preset("demo")


def test_new_run_writes_its_config(tmp_path: Path) -> None:
    with RunDirectory(tmp_path / "run", CONFIG, resume=False) as run:
        assert load_yaml(run.root / "config.yaml") == CONFIG
        assert (run.root / "run.lock").exists()


def test_a_second_opener_is_locked_out_until_the_first_closes(tmp_path: Path) -> None:
    first = RunDirectory(tmp_path, CONFIG, resume=False)
    try:
        with pytest.raises(UserError, match="in use by another activeseg process"):
            RunDirectory(tmp_path, CONFIG, resume=True)
    finally:
        first.close()
    RunDirectory(tmp_path, CONFIG, resume=True).close()


def test_an_existing_run_needs_resume(tmp_path: Path) -> None:
    RunDirectory(tmp_path, CONFIG, resume=False).close()
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        RunDirectory(tmp_path, CONFIG, resume=False)
    RunDirectory(tmp_path, CONFIG, resume=True).close()  # the failed open released the lock


def test_resume_with_another_config_names_the_changed_keys(tmp_path: Path) -> None:
    RunDirectory(tmp_path, CONFIG, resume=False).close()
    changed = with_overrides(CONFIG, {"train.epochs": 41, "loop.strategies": "random"})
    with pytest.raises(UserError, match="train.epochs: 40 -> 41") as info:
        RunDirectory(tmp_path, changed, resume=True)
    assert "loop.strategies: ['random', 'std_edt'] -> ['random']" in str(info.value)
    assert "model." not in str(info.value)
    RunDirectory(tmp_path, CONFIG, resume=True).close()


def test_resume_on_an_empty_directory_starts_a_run(tmp_path: Path) -> None:
    with RunDirectory(tmp_path / "new", CONFIG, resume=True) as run:
        assert load_yaml(run.root / "config.yaml") == CONFIG


def test_records_round_trip_in_order_with_their_schema(tmp_path: Path) -> None:
    with RunDirectory(tmp_path, CONFIG, resume=False) as run:
        assert run.records("std_edt", 0) == []
        for i in range(3):
            run.append_record("std_edt", 0, {"iteration": i, "selected": [i, 10 + i]})
        run.append_record("random", 1, {"iteration": 0})
        records = run.records("std_edt", 0)
    assert [r["iteration"] for r in records] == [0, 1, 2]
    assert records[1] == {"schema": RECORD_SCHEMA, "iteration": 1, "selected": [1, 11]}
    assert (tmp_path / "records-std_edt-rep0.jsonl").read_text().count("\n") == 3
    assert read_records(tmp_path / "records-random-rep1.jsonl") == [
        {"schema": RECORD_SCHEMA, "iteration": 0}
    ]


def test_a_non_finite_record_is_refused_and_the_file_kept(tmp_path: Path) -> None:
    with RunDirectory(tmp_path, CONFIG, resume=False) as run:
        run.append_record("random", 0, {"iteration": 0, "test_dice": 0.5})
        with pytest.raises(ValueError, match="Out of range float"):
            run.append_record("random", 0, {"iteration": 1, "test_dice": float("nan")})
        assert len(run.records("random", 0)) == 1


def test_a_damaged_record_file_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "records-random-rep0.jsonl"
    path.write_text('{"schema": 1, "iteration": 0}\n{"schema": 1, "itera')
    with pytest.raises(UserError, match=r"records-random-rep0.jsonl:2 is not valid JSON"):
        read_records(path)


def test_a_record_of_another_schema_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "records-random-rep0.jsonl"
    path.write_text(json.dumps({"schema": 99, "iteration": 0}) + "\n")
    with pytest.raises(UserError, match=":1: record schema 99 unsupported"):
        read_records(path)


def test_split_is_stored_once_and_checked_on_resume(tmp_path: Path) -> None:
    split = {"initial": [1, 2], "pool": [3], "val": [4], "test": [5], "train_sources": ["a"]}
    with RunDirectory(tmp_path, CONFIG, resume=False) as run:
        assert run.load_or_save_split(split) == split
    with RunDirectory(tmp_path, CONFIG, resume=True) as run:
        assert run.load_or_save_split(split) == split
        with pytest.raises(UserError, match="differs from the split the data gives now"):
            run.load_or_save_split({**split, "pool": [3, 6]})
    assert json.loads((tmp_path / "split.json").read_text()) == split


def test_checkpoints_and_maps_land_under_their_names(tmp_path: Path) -> None:
    with RunDirectory(tmp_path, CONFIG, resume=False) as run:
        run.save_checkpoint("std_edt", 1, {"iteration": 3, "w": torch.ones(2)})
        writer = run.maps_writer("std_edt", 1, 3, n=2)
        writer.add(np.array([4, 5]), np.zeros(2), map=np.zeros((2, 3, 3), np.float16))
        writer.commit()
    checkpoint = torch.load(tmp_path / "checkpoints" / "std_edt-rep1.pt")
    assert checkpoint["iteration"] == 3 and torch.equal(checkpoint["w"], torch.ones(2))
    with np.load(tmp_path / "maps" / "std_edt-rep1-it03.npz") as maps:
        assert maps["ids"].tolist() == [4, 5] and maps["map"].shape == (2, 3, 3)


def test_atomic_write_replaces_whole_files_and_leaves_no_temporaries(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "file.txt"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.txt"]


def test_a_failed_atomic_write_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "file.txt"
    atomic_write_text(path, "old")

    def broken_replace(src: str, dst: os.PathLike[str]) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_config_saved_is_the_one_given(tmp_path: Path) -> None:
    config = with_overrides(Config(), {"data.n_pool": None, "loop.strategies": "std_sum"})
    RunDirectory(tmp_path, config, resume=False).close()
    assert load_yaml(tmp_path / "config.yaml") == config
