"""The environment a run computed in, kept as ``environment.json`` next to its results.

Results depend in their last bits on the software versions, the device, the CPU's
instruction set, the number of torch threads and the precision (bf16 autocast or fp32), so
every run directory and annotation project records them: :func:`describe` collects them,
:func:`record_environment` writes them. A folder later used in another environment (a
resumed run on another machine, a project after an upgrade) keeps the earlier descriptions
under ``"earlier"``, and :func:`record_environment` returns what changed.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from activeseg import __version__
from activeseg.files import atomic_write_text
from activeseg.runtime import Runtime, native_bf16

ENVIRONMENT_FILE = "environment.json"
ENVIRONMENT_SCHEMA = 1
CPU_FLAGS = (  # the instruction-set extensions that change speed or results of torch on a CPU
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
    "asimd", "sve", "sve2", "bf16", "i8mm",
)  # fmt: skip
_VOLATILE = ("written", "earlier")  # fields that do not describe the environment


def describe(runtime: Runtime, threads: int | None = None, **extra: Any) -> dict[str, Any]:
    """The environment of computations on ``runtime`` with ``threads`` torch threads (default:
    this process's): versions, git commit, device, CPU model and flags, threads, precision
    actually used; ``extra`` fields are added (e.g. the grid's execution)."""
    commit, dirty = git_commit()
    return {
        "activeseg": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "monai": _version("monai"),
        "numpy": _version("numpy"),
        "device": str(runtime.device),
        "device_name": _device_name(runtime.device),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "torch_cpu_capability": _cpu_capability(),
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "precision": "bf16" if runtime.bf16 else "fp32",
        "native_bf16": native_bf16(runtime.device),
        **extra,
    }


def record_environment(folder: Path, env: dict[str, Any]) -> list[str]:
    """Write ``env`` (with the time) to ``folder/environment.json``; a different environment
    stored there before moves to ``"earlier"``. Returns the changed fields as
    ``"torch: 2.3 -> 2.4"`` (empty the first time or when nothing changed)."""
    path = folder / ENVIRONMENT_FILE
    earlier: list[dict[str, Any]] = []
    changes: list[str] = []
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            stored = {}  # a damaged file is replaced; the records stand on their own
        earlier = list(stored.get("earlier", []))
        previous = {k: v for k, v in stored.items() if k not in _VOLATILE and k != "schema"}
        changes = [
            f"{k}: {previous.get(k)} -> {env.get(k)}"
            for k in sorted(set(previous) | set(env))
            if previous.get(k) != env.get(k)
        ]
        if changes:
            earlier.append({k: v for k, v in stored.items() if k != "earlier"})
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    out = {"schema": ENVIRONMENT_SCHEMA, "written": now, **env}
    if earlier:
        out["earlier"] = earlier
    atomic_write_text(path, json.dumps(out, indent=1) + "\n")
    return changes


def git_commit() -> tuple[str | None, bool | None]:
    """The commit activeseg was installed from, and whether its source differed from it:
    from a git checkout (an editable install) ``git rev-parse``; from a wheel built from a
    git URL pip's ``direct_url.json``; else ``(None, None)``."""
    root = Path(__file__).resolve().parents[2]  # <checkout>/src/activeseg/environment.py
    if (root / ".git").exists():
        head = _git(root, "rev-parse", "HEAD")
        if head:
            status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", "src")
            return head, None if status is None else bool(status)
    try:
        direct = importlib.metadata.distribution("activeseg").read_text("direct_url.json")
        commit = json.loads(direct or "{}").get("vcs_info", {}).get("commit_id")
    except (importlib.metadata.PackageNotFoundError, json.JSONDecodeError):
        commit = None
    return commit, None


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def cpu_model() -> str | None:
    """The CPU's model name (Linux ``/proc/cpuinfo``, macOS ``sysctl``, else ``platform``)."""
    for line in _cpuinfo():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            return line.split(":", 1)[1].strip()
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or None


def cpu_flags() -> list[str] | None:
    """The CPU's flags among :data:`CPU_FLAGS` (Linux; ``None`` where not readable)."""
    for line in _cpuinfo():
        if line.lower().startswith(("flags", "features")):
            present = set(line.split(":", 1)[1].split())
            return [f for f in CPU_FLAGS if f in present]
    return None


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return []


def _cpu_capability() -> str | None:
    get = getattr(torch.backends.cpu, "get_cpu_capability", None)
    return str(get()) if get is not None else None


def _device_name(device: torch.device) -> str | None:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return cpu_model()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
