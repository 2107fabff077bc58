"""Progress bars only on a terminal; redirected output is one plain line per iteration, and
the run's log.txt keeps what the terminal showed without the bars."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES

from activeseg import console
from activeseg.cli import main
from activeseg.console import LogFile, clean, progress_bar

TINY_SETS = [arg for key, value in TINY_OVERRIDES.items() for arg in ("--set", f"{key}={value}")]
ITERATION = re.compile(r" rep \d it +\d: +\d+ labelled, test dice")


def test_bars_show_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert not progress_bar(total=3).disable
    assert progress_bar(total=3, enabled=False).disable
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert progress_bar(total=3).disable
    monkeypatch.setitem(sys.modules, "ipykernel", sys)  # Jupyter: tqdm draws widgets
    assert not progress_bar(total=3).disable


def test_redirected_output_has_no_escape_sequences_and_a_line_per_iteration(
    tmp_path: Path,
) -> None:
    """``activeseg simulate ... > log 2>&1`` in a subprocess (stdout and stderr a file, as
    with ``activeseg demo > log 2>&1``): on the main before, tqdm wrote its bars (with
    ``\\r`` and ``ESC[A``) to the file."""
    out, log = tmp_path / "run", tmp_path / "log"
    argv = ["simulate", "--preset", "demo", "--out", str(out), "--cpus-per-run", "1", *TINY_SETS]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with log.open("wb") as f:
        done = subprocess.run(
            [sys.executable, "-m", "activeseg.cli", *argv], stdout=f, stderr=f, env=env
        )
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\x1b" not in text and "\r" not in text
    lines = text.splitlines()
    iterations = [line for line in lines if ITERATION.search(line)]
    assert len(iterations) == 2 * 2 * 3  # strategies x repetitions x (iterations + 1)
    assert len(lines) <= len(iterations) + 12  # data, upper bounds, size, summary, paths


def test_log_txt_keeps_the_lines_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["simulate", "--preset", "demo", "--out", str(out), *TINY_SETS]
    assert main([*argv, "--set", "loop.repetitions=1"]) == 0
    shown = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    logged = (out / "log.txt").read_text().splitlines()
    assert logged[0].startswith("== ") and "activeseg" in logged[0]
    assert [line for line in logged[1:] if line.strip()] == shown
    assert sum(bool(ITERATION.search(line)) for line in logged) == 2 * 3
    # a resumed session appends, with its own header
    assert main([*argv, "--set", "loop.repetitions=1", "--resume", "--quiet"]) == 0
    logged = (out / "log.txt").read_text().splitlines()
    assert sum(line.startswith("== ") for line in logged) == 2
    assert logged[-1] == f"report: {(out / 'report' / 'report.html').resolve()}"


def test_a_stopped_run_says_why_in_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from activeseg.simulation import run as run_module

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "pending_tasks", interrupted)
    out = tmp_path / "run"
    assert main(["simulate", "--preset", "demo", "--out", str(out), "--quiet", *TINY_SETS]) == 130
    assert (out / "log.txt").read_text().splitlines()[-1] == "stopped: KeyboardInterrupt: "


def test_log_file_keeps_lines_until_attached_and_cleans_them(tmp_path: Path) -> None:
    keep = LogFile()
    keep("before\x1b[A the folder\r")
    keep.attach(tmp_path / "log.txt", header=False)
    keep("after")
    assert (tmp_path / "log.txt").read_text() == "before the folder\nafter\n"
    assert clean("50%|\x1b[32m###\x1b[0m|\r") == "50%|###|"
    assert console.header_line().startswith("== ")
