"""Command line: exit codes, one-line errors, config printing, a tiny simulation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TINY_OVERRIDES

from activeseg import simulation as simulate_module
from activeseg.cli import main
from activeseg.config import Config, from_dict
from activeseg.files import read_records
from activeseg.presets import preset

TINY_SETS = [arg for key, value in TINY_OVERRIDES.items() for arg in ("--set", f"{key}={value}")]


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("activeseg: error: ")
    return lines[0]


def test_config_prints_the_preset_as_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--preset", "cpu"]) == 0
    out = capsys.readouterr().out
    assert from_dict(yaml.safe_load(out)) == preset("cpu")


def test_config_applies_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--preset", "paper-tem", "--set", "train.epochs=5"]) == 0
    assert from_dict(yaml.safe_load(capsys.readouterr().out)).train.epochs == 5


@pytest.mark.parametrize("command", ["config", "simulate"])
def test_unknown_preset_exits_2_with_one_line(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ["--out", str(tmp_path / "run")] if command == "simulate" else []
    assert main([command, "--preset", "fast", *extra]) == 2
    assert "unknown preset 'fast'" in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategies", "random,bold"], "unknown strategy 'bold'"),
        (["--set", "train.epochs"], "--set expects key=value"),
        (["--set", "train.speed=3"], "unknown setting 'train.speed'"),
        (["--set", "train.epochs=many"], "setting train.epochs: 'many' is not a valid int"),
        (
            ["--iterations", "2", "--set", "loop.iterations=3"],
            "loop.iterations given both as a flag and with --set",
        ),
        (["--data", "synthetic", "--set", "data.source=x"], "data.source given both"),
        (["--data", "/does/not/exist"], "data source '/does/not/exist' is not a directory"),
        (
            ["--set", "loop.selection=best"],
            "loop.selection must be one of top_k, stochastic, got 'best'",
        ),
        (["--strategies", "bald@forest"], "unknown strategy 'bald@forest'"),
    ],
)
def test_simulate_user_errors_exit_2_with_one_line_and_no_run(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["simulate", "--preset", "demo", "--out", str(out), "--quiet", *args]) == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert not out.exists()


def test_simulate_flags_reach_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_simulate(
        config: Config, out: Path, resume: bool, progress: bool, **kwargs: object
    ) -> Path:
        seen.update(config=config, out=out, resume=resume, progress=progress)
        raise KeyboardInterrupt  # stop before the summary

    monkeypatch.setattr(simulate_module, "simulate", fake_simulate)
    args = ["simulate", "--preset", "demo", "--out", str(tmp_path), "--resume", "--quiet"]
    args += ["--strategies", "std_sum,random", "--repetitions", "4", "--iterations", "3"]
    args += ["-k", "2", "--seed", "9", "--set", "train.lr=1e-3", "--pool-policy", "keep"]
    args += ["--init", "warm", "--precision", "bf16", "--channel", "1"]
    assert main(args) == 130
    config = seen["config"]
    assert config.data.channel == 1
    assert (config.train.init, config.train.precision) == ("warm", "bf16")
    assert config.loop.pool_policy == "keep"
    assert config.loop.strategies == ("std_sum", "random")
    assert (config.loop.repetitions, config.loop.iterations, config.loop.query_size) == (4, 3, 2)
    assert (config.loop.seed, config.train.lr, config.data.source) == (9, 1e-3, "synthetic")
    assert config.model == preset("demo").model
    assert (seen["out"], seen["resume"], seen["progress"]) == (tmp_path, True, False)


def test_interrupt_exits_130_and_says_how_to_continue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object, **kwargs: object) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr(simulate_module, "simulate", interrupted)
    assert main(["simulate", "--out", str(tmp_path)]) == 130
    assert "continue with --resume" in capsys.readouterr().err


def test_argument_errors_return_2_from_main(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate"]) == 2  # --out is required; argparse's SystemExit is caught
    assert "--out" in capsys.readouterr().err


def test_demo_resumes_when_its_directory_holds_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bool] = []

    def fake_simulate(
        config: Config, out: Path, resume: bool, progress: bool, **kwargs: object
    ) -> Path:
        calls.append(resume)
        assert config == preset("demo")
        raise KeyboardInterrupt

    monkeypatch.setattr(simulate_module, "simulate", fake_simulate)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 130
    out.mkdir()
    (out / "config.yaml").write_text("schema: 1\n")
    assert main(["demo", "--out", str(out), "--quiet"]) == 130
    assert calls == [False, True]


def test_simulate_runs_a_tiny_config_and_prints_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    sets = [*TINY_SETS, "--set", "loop.repetitions=1", "--set", "data.source=synthetic"]
    assert main(["simulate", "--preset", "demo", "--out", str(out), "--quiet", *sets]) == 0
    records = read_records(out / "records-std_edt-rep0.jsonl")
    assert [r["iteration"] for r in records] == [0, 1, 2]
    printed = capsys.readouterr().out
    assert "test_dice (mean ± std over repetitions" in printed
    assert f"results: {out.resolve()}" in printed
    # The same command again needs --resume.
    assert main(["simulate", "--preset", "demo", "--out", str(out), "--quiet", *sets]) == 2
    assert "already holds a run" in one_line_error(capsys.readouterr().err)
