"""Public datasets pinned by content: a SHA-256 manifest of every file, shipped with activeseg.

``activeseg get-data data_axondeepseg_sem DIR`` clones the upstream repository with git and
checks out its newest commit whose files all match the manifest (the copy every published
number was measured on), so a later change upstream cannot silently change the data;
``activeseg check-data DIR`` verifies a copy obtained any other way. Files that the manifest
does not list (``.git``, new upstream files) are ignored.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

from activeseg.errors import UserError

UPSTREAM = {
    "data_axondeepseg_sem": "https://github.com/axondeepseg/data_axondeepseg_sem",
}
"""Datasets with a manifest, and the git repository each comes from."""


def read_manifest(dataset: str) -> dict[str, str]:
    """Relative path -> SHA-256 hex digest of every file of ``dataset`` (``sha256sum``
    format: ``<digest>  <path>`` per line)."""
    if dataset not in UPSTREAM:
        raise UserError(f"unknown dataset {dataset!r}; known: {', '.join(UPSTREAM)}")
    text = files("activeseg.data").joinpath(f"manifests/{dataset}.sha256").read_text()
    manifest = {}
    for line in text.splitlines():
        digest, _, path = line.partition("  ")
        if line.strip():
            manifest[path.strip()] = digest.strip()
    return manifest


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mismatch(root: Path, dataset: str) -> str | None:
    """The first manifest file missing from ``root`` or different there (as a sentence), or
    ``None`` if every file matches."""
    for path, digest in sorted(read_manifest(dataset).items()):
        file = root / path
        if not file.is_file():
            return f"{file} is missing"
        if sha256(file) != digest:
            return f"{file} differs from the published copy (SHA-256 {digest[:12]}…)"
    return None


def check_dataset(root: Path, dataset: str = "data_axondeepseg_sem") -> int:
    """Verify ``root`` against the manifest of ``dataset``; the number of files checked.
    A :class:`UserError` names the first file that is missing or differs."""
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; give the dataset folder to check")
    problem = mismatch(root, dataset)
    if problem is not None:
        raise UserError(
            f"{problem}; this is not the copy activeseg's results were measured on: run "
            f"`activeseg get-data {dataset} NEW_FOLDER` to fetch it"
        )
    return len(read_manifest(dataset))


def fetch_dataset(
    out: Path,
    dataset: str = "data_axondeepseg_sem",
    source: str | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Clone ``dataset`` from ``source`` (default: its upstream repository) into ``out`` and
    check out the newest commit whose files match the manifest; returns that commit."""
    read_manifest(dataset)  # an unknown dataset fails before any download
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose a new folder")
    if shutil.which("git") is None:
        raise UserError("get-data needs git (https://git-scm.com); or download the dataset "
                        "by hand and verify it with `activeseg check-data`")  # fmt: skip
    url = source or UPSTREAM[dataset]
    log(f"cloning {url} into {out}")
    _git("clone", "--quiet", url, str(out))
    for commit in _git("rev-list", "HEAD", cwd=out).split():
        _git("checkout", "--quiet", commit, cwd=out)
        if mismatch(out, dataset) is None:
            log(f"{dataset}: commit {commit} matches the manifest; checked out")
            return commit
    raise UserError(
        f"no commit of {url} matches activeseg's manifest of {dataset} (upstream may have "
        f"rewritten its history); {out} holds the oldest commit"
    )


def _git(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"git {' '.join(args[:2])} failed: {result.stderr.strip()}")
    return result.stdout
