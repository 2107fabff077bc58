"""Crash safety with real processes: ``activeseg simulate`` killed with SIGKILL at seeded
random moments and resumed each time ends with exactly the files of an uninterrupted run;
and the memory of scoring does not grow with the pool (both slow: subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_OVERRIDES
from test_reliability import run_contents, run_quietly

from activeseg.config import Config
from activeseg.files import read_records

ROOT = Path(__file__).resolve().parents[1]
TINY_SETS = [arg for key, value in TINY_OVERRIDES.items() for arg in ("--set", f"{key}={value}")]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
LINES = 2 * 2 * 3 + 2  # records: 2 strategies x 2 repetitions x 3 iterations, + 2 upper bounds
KILLS = 4
TIMEOUT = 120.0  # seconds any one process may take


def start(out: Path, resume: bool, env: dict[str, str] = ENV) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "activeseg.cli", "simulate", "--preset", "demo", *TINY_SETS]
    args += ["--quiet", "--out", str(out), *(["--resume"] if resume else [])]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def lines_written(out: Path) -> int:
    """Completed iterations and upper bounds on disk (every file must parse)."""
    return sum(len(read_records(p)) for p in out.glob("*.jsonl"))


def kill_when(process: subprocess.Popen[bytes], out: Path, lines: int, delay: float) -> bool:
    """SIGKILL ``process`` ``delay`` s after ``lines`` records are on disk; False if it
    finished first."""
    deadline = time.monotonic() + TIMEOUT
    while process.poll() is None and lines_written(out) < lines:
        assert time.monotonic() < deadline, "simulate took too long"
        time.sleep(0.02)
    time.sleep(delay)
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    return True


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(
    tiny_config: Config, tmp_path: Path
) -> None:
    began = time.monotonic()
    reference = run_quietly(tiny_config, tmp_path / "reference")
    out = tmp_path / "killed"
    rng = np.random.default_rng(2026)
    targets = np.sort(rng.choice(LINES - 2, KILLS, replace=False))
    delays = rng.uniform(0.0, 1.5, KILLS)
    progress, killed, leftovers = [], 0, 0
    for n, (target, delay) in enumerate(zip(targets, delays, strict=True)):
        process = start(out, resume=n > 0)
        try:
            killed += kill_when(process, out, int(target), float(delay))
        finally:
            process.kill()
        leftovers += bool(list(out.rglob("*.tmp")))
        progress.append(lines_written(out))  # the lock of the killed process did not stay
    assert progress == sorted(progress)  # nothing finished was ever lost
    final = start(out, resume=True)
    _, err = final.communicate(timeout=TIMEOUT)
    assert final.returncode == 0, err.decode()
    assert not list(out.rglob("*.tmp"))
    assert run_contents(out) == run_contents(reference)  # records, maps, weights: bit-equal
    print(
        f"\n{killed} kills (records on disk after each: {progress}; {leftovers} left "
        f"temporaries), resumed to the reference in {time.monotonic() - began:.0f} s"
    )
    assert killed >= 2


KILL_AT_RENAME = """
import os, signal
_rename, _calls = os.replace, 0
def _replace(src, dst, *args, **kwargs):
    global _calls
    _calls += str(dst).startswith(os.environ["KILL_IN"])  # the run's files only
    if _calls == int(os.environ["KILL_AT_RENAME"]):
        os.kill(os.getpid(), signal.SIGKILL)  # the temporary is complete, not yet renamed
    return _rename(src, dst, *args, **kwargs)
os.replace = _replace
"""


@pytest.mark.slow
def test_sigkill_between_writing_a_temporary_and_renaming_it_is_harmless(
    tiny_config: Config, tmp_path: Path
) -> None:
    """Each process kills itself at its n-th ``os.replace`` (a ``sitecustomize`` hook), i.e.
    with a finished temporary that never got its final name; the resume ignores and removes
    it and the run ends equal to an uninterrupted one."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_AT_RENAME)
    out = tmp_path / "killed"
    stranded = 0
    for n, at in enumerate((4, 9, 15)):
        env = {**ENV, "PYTHONPATH": f"{hook}{os.pathsep}{ENV['PYTHONPATH']}"}
        env.update(KILL_AT_RENAME=str(at), KILL_IN=str(out))
        process = start(out, resume=n > 0, env=env)
        assert process.wait(timeout=TIMEOUT) == -signal.SIGKILL
        stranded += len(list(out.rglob(".*.tmp")))
    assert stranded >= 3  # every kill left its temporary behind
    final = start(out, resume=True)
    _, err = final.communicate(timeout=TIMEOUT)
    assert final.returncode == 0, err.decode()
    assert not list(out.rglob("*.tmp"))
    reference = run_quietly(tiny_config, tmp_path / "reference")
    assert run_contents(out) == run_contents(reference)


def scoring_memory(pool: int) -> dict[str, float]:
    script = ROOT / "benchmarks" / "scoring_memory.py"
    done = subprocess.run(
        [sys.executable, str(script), "--pool", str(pool)],
        env=ENV,
        capture_output=True,
        timeout=TIMEOUT,
        check=True,
    )
    return dict(json.loads(done.stdout.decode().strip().splitlines()[-1]))


@pytest.mark.slow
def test_scoring_memory_does_not_grow_with_the_pool() -> None:
    """Whole-pool statistics of 2,000 patches of 64 px took about 320 MB more than of 500
    (benchmarks/scoring_memory.py --whole); chunked and streamed, both take about 25 MB."""
    small, large = scoring_memory(500), scoring_memory(2000)
    print(f"\nscoring memory: {small} vs {large}")
    assert large["scoring_mb"] - small["scoring_mb"] < 15
    assert large["scoring_mb"] < 60
    assert large["maps_file_mb"] > 3.5 * small["maps_file_mb"]  # the maps all went to disk
