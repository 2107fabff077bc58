"""Provenance: every run directory and project records its environment; a run's own
config.yaml runs it again (``--config``), with ``--set`` and flags still overriding."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_OVERRIDES, run_records
from PIL import Image

from activeseg.cli import main
from activeseg.config import load_yaml
from activeseg.data.phantom import make_phantom
from activeseg.environment import ENVIRONMENT_FILE, describe, git_commit, record_environment
from activeseg.runtime import resolve

TINY_SETS = [arg for key, value in TINY_OVERRIDES.items() for arg in ("--set", f"{key}={value}")]
TINY_RUN = [*TINY_SETS, "--set", "loop.repetitions=1", "--quiet", "--cpus-per-run", "1"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("provenance") / "first"
    assert main(["simulate", "--preset", "demo", "--out", str(out), *TINY_RUN]) == 0
    return out


def test_a_run_records_its_environment(first_run: Path) -> None:
    env = json.loads((first_run / ENVIRONMENT_FILE).read_text())
    assert env["torch"] == torch.__version__ and env["python"] == platform.python_version()
    assert env["activeseg"] and env["numpy"] == np.__version__ and env["monai"]
    assert env["device"] == "cpu" and env["precision"] == "fp32"  # TINY: fp32 on the CPU
    assert env["torch_threads"] == 1  # --cpus-per-run 1
    assert env["execution"] == {"workers": 1, "ray": None, "shards": 1}
    assert isinstance(env["native_bf16"], bool) and "earlier" not in env
    assert env["git_commit"] == git_commit()[0]
    if Path("/proc/cpuinfo").exists():
        assert env["cpu_model"] and isinstance(env["cpu_flags"], list)


def test_a_checkout_reports_its_commit() -> None:
    """Installed from this git checkout (the tests' case), the commit is HEAD's."""
    commit, dirty = git_commit()
    if not (Path(__file__).resolve().parents[1] / ".git").exists():
        pytest.skip("not a git checkout")
    assert commit is not None and len(commit) == 40 and isinstance(dirty, bool)


def test_another_environment_is_kept_under_earlier(tmp_path: Path) -> None:
    runtime = resolve("cpu", "fp32")
    assert record_environment(tmp_path, describe(runtime, 1)) == []
    assert record_environment(tmp_path, describe(runtime, 1)) == []  # same: nothing kept
    changes = record_environment(tmp_path, describe(runtime, 2))
    assert changes == ["torch_threads: 1 -> 2"]
    env = json.loads((tmp_path / ENVIRONMENT_FILE).read_text())
    assert env["torch_threads"] == 2 and [e["torch_threads"] for e in env["earlier"]] == [1]


def test_a_resumed_run_in_another_environment_says_so(first_run: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(first_run, out)
    env = json.loads((out / ENVIRONMENT_FILE).read_text())
    (out / ENVIRONMENT_FILE).write_text(json.dumps({**env, "torch": "0.0-elsewhere"}))
    argv = ["simulate", "--config", str(out / "config.yaml"), "--out", str(out), "--resume"]
    assert main([*argv, "--quiet", "--cpus-per-run", "1"]) == 0
    assert "torch: 0.0-elsewhere -> " in (out / "log.txt").read_text()
    assert json.loads((out / ENVIRONMENT_FILE).read_text())["earlier"][0]["torch"] == (
        "0.0-elsewhere"
    )


def test_a_runs_config_runs_it_again(first_run: Path, tmp_path: Path) -> None:
    """``simulate --config RUN/config.yaml --data ... --out NEW`` at equal threads gives RUN's
    records (wall-clock seconds aside)."""
    new = tmp_path / "again"
    argv = ["simulate", "--config", str(first_run / "config.yaml"), "--data", "synthetic"]
    assert main([*argv, "--out", str(new), "--quiet", "--cpus-per-run", "1"]) == 0
    assert run_records(new) == run_records(first_run)
    assert load_yaml(new / "config.yaml") == load_yaml(first_run / "config.yaml")


def test_flags_and_set_override_a_config_file(
    first_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(first_run / "config.yaml")
    new = tmp_path / "changed"
    argv = ["simulate", "--config", config, "--iterations", "1", "--set", "train.epochs=2"]
    assert main([*argv, "--out", str(new), "--quiet", "--cpus-per-run", "1"]) == 0
    saved = load_yaml(new / "config.yaml")
    assert (saved.loop.iterations, saved.train.epochs) == (1, 2)
    assert saved.model == load_yaml(first_run / "config.yaml").model
    capsys.readouterr()
    both = ["simulate", "--config", config, "--preset", "cpu", "--out", str(tmp_path / "x")]
    assert main(both) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["simulate", "--config", str(tmp_path / "none.yaml"), "--out", "x"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_init_takes_a_config_file_and_projects_keep_log_and_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for s in make_phantom(n_images=2, size=64, seed=1, hard_fraction=0.0):
        Image.fromarray(np.round(s.image * 255).astype(np.uint8)).save(images / f"{s.name}.png")
    first, second = tmp_path / "p1", tmp_path / "p2"
    sets = ["--set", "data.patch_size=32", "--set", "train.epochs=3"]
    assert main(["init", str(first), "--images", str(images), "--preset", "demo", *sets]) == 0
    argv = ["init", str(second), "--images", str(images), "--config", str(first / "config.yaml")]
    assert main([*argv, "--set", "train.epochs=5"]) == 0
    a, b = load_yaml(first / "config.yaml"), load_yaml(second / "config.yaml")
    assert (a.data.patch_size, b.data.patch_size, b.train.epochs) == (32, 32, 5)
    assert b.model == a.model and b.scoring == a.scoring
    shown = capsys.readouterr().out.splitlines()
    log = (second / "log.txt").read_text().splitlines()
    assert log[0].startswith("== ") and log[1:] == shown[-len(log) + 1 :]
    assert main(["status", str(second)]) == 0
    assert (
        sum(line.startswith("== ") for line in (second / "log.txt").read_text().splitlines()) == 2
    )
    env = json.loads((second / ENVIRONMENT_FILE).read_text())
    assert env["torch"] == torch.__version__ and env["precision"] in ("fp32", "bf16")
    assert main(["status", str(tmp_path / "nowhere")]) == 2
    assert not (tmp_path / "nowhere").exists()
