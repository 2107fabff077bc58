"""The Python API as docs/api.md shows it: the example block is run as a script (its own
network and a registered strategy, two worker processes), then the same code in this
process must give the same records; a strategy from an installed package's entry point
works by name."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import activeseg
from activeseg.acquisition import get_strategy
from activeseg.errors import UserError
from activeseg.simulation.executors import available_cores

DOC = Path(__file__).parents[1] / "docs" / "api.md"


def example_code() -> str:
    """The first Python block after the heading "## Example" of docs/api.md."""
    text = DOC.read_text()
    section = text[text.index("## Example") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "docs/api.md has no Python block under '## Example'"
    return match.group(1)


def without_seconds(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The example run as a script in a fresh folder: (folder, its standard output)."""
    folder = tmp_path_factory.mktemp("api")
    (folder / "api_example.py").write_text(example_code())
    result = subprocess.run(
        [sys.executable, "api_example.py"], cwd=folder, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, result.stdout


def test_the_documented_example_runs_with_its_network_and_strategy_on_two_workers(
    example: tuple[Path, str],
) -> None:
    folder, out = example
    lines = [line for line in out.splitlines() if "test Dice" in line]
    assert len(lines) == 6 and sum("margin" in line for line in lines) == 3
    run = activeseg.load_run(folder / "runs" / "api-example")
    assert sorted({r["strategy"] for r in run.records}) == ["margin", "random"]
    assert all(0.0 <= r["test_dice"] <= 1.0 for r in run.records)
    margin = [r for r in run.records if r["strategy"] == "margin"]
    assert all(s > 0 for r in margin[:-1] for s in r["selected_scores"])
    saved = torch.load(run.root / "checkpoints" / "margin-rep0.pt", weights_only=True)
    assert "body.0.weight" in saved["models"][0]  # DilatedNet, not the U-Net
    assert "stem.0.weight" not in saved["models"][0]
    assert (run.root / "report" / "report.html").is_file()


def load_example(folder: Path) -> ModuleType:
    """The example imported as a module (registers its strategy in this process)."""
    spec = importlib.util.spec_from_file_location("api_example", folder / "api_example.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_same_code_in_this_process_gives_the_records_of_the_workers(
    example: tuple[Path, str], tmp_path: Path
) -> None:
    folder, _ = example
    module = load_example(folder)
    assert get_strategy("margin").name == "margin"  # registered by the example
    reference = activeseg.load_run(folder / "runs" / "api-example")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, available_cores() // 2))  # as each of the two workers
    try:
        run = activeseg.simulate(
            "demo",
            tmp_path / "in-process",
            data="synthetic",
            strategies=["random", "margin"],
            network=module.DilatedNet,
            settings={"loop.repetitions": 1, "loop.iterations": 2, "train.epochs": 20},
            log=lambda line: None,
        )
    finally:
        torch.set_num_threads(threads)
    assert without_seconds(run.records) == without_seconds(reference.records)
    assert without_seconds(run.upper_bound) == without_seconds(reference.upper_bound)


def test_a_network_without_dropout_is_refused_for_mc_strategies(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="MC-dropout scoring needs a network with dropout"):
        activeseg.simulate(
            "demo",
            tmp_path / "run",
            data="synthetic",
            strategies=["std_edt"],
            network=lambda: torch.nn.Conv2d(1, 1, 3, padding=1),
            settings={"loop.repetitions": 1, "loop.iterations": 1, "train.epochs": 1},
            log=lambda line: None,
        )


def test_a_strategy_from_an_entry_point_is_found_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed package's ``activeseg.strategies`` entry point (a dist-info folder on the
    path, as pip writes it) makes its strategy available without any call."""
    (tmp_path / "acme_strategies.py").write_text(
        textwrap.dedent(
            """
            from activeseg.acquisition import MapStrategy

            def make(scoring):
                return MapStrategy("acme", "entropy", reduction="mean")
            """
        )
    )
    info = tmp_path / "acme_strategies-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-strategies\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[activeseg.strategies]\nacme = acme_strategies:make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    strategy = get_strategy("acme")
    assert (strategy.name, strategy.needs_mc) == ("acme", True)
    assert get_strategy("acme@ensemble").committee == "ensemble"
    with pytest.raises(UserError, match="unknown strategy 'acne'"):
        get_strategy("acne")
