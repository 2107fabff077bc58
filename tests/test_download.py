"""Datasets pinned by content: the manifest check and the clone that finds the matching
commit (on a local git repository made from the real SEM data)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from activeseg.cli import main
from activeseg.data.download import check_dataset, fetch_dataset, read_manifest
from activeseg.errors import UserError

SEM = Path(__file__).parents[1] / ".." / "shared" / "data" / "data_axondeepseg_sem"
needs_sem = pytest.mark.skipif(
    not SEM.is_dir(), reason="the AxonDeepSeg SEM data is not at ../shared/data"
)


def test_the_manifest_lists_images_masks_and_sidecars() -> None:
    manifest = read_manifest("data_axondeepseg_sem")
    assert sum(p.endswith("_SEM.png") for p in manifest) == 10
    assert sum(p.endswith("_seg-myelin-manual.png") for p in manifest) == 10
    assert all(len(d) == 64 for d in manifest.values())
    with pytest.raises(UserError, match="unknown dataset 'mnist'"):
        read_manifest("mnist")


@needs_sem
def test_check_data_passes_the_published_copy_and_names_a_changed_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-data", str(SEM)]) == 0
    assert "all 56 files of data_axondeepseg_sem match" in capsys.readouterr().out
    copy = tmp_path / "sem"
    shutil.copytree(SEM, copy)
    (copy / "extra.txt").write_text("files the manifest does not list are ignored")
    assert check_dataset(copy) == 56
    label = next(copy.rglob("*_seg-myelin-manual.png"))
    label.write_bytes(label.read_bytes() + b"\0")
    assert main(["check-data", str(copy)]) == 2
    assert f"{label} differs from the published copy" in capsys.readouterr().err
    label.unlink()
    with pytest.raises(UserError, match=f"{label} is missing"):
        check_dataset(copy)


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@needs_sem
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_get_data_checks_out_the_newest_commit_that_matches(tmp_path: Path) -> None:
    upstream = tmp_path / "upstream"
    shutil.copytree(SEM, upstream)
    _git(upstream, "init", "-q")
    _git(upstream, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    _git(upstream, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "published")
    (upstream / "README").write_text("a later upstream change\n")
    _git(upstream, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "later")
    published = subprocess.run(
        ["git", "rev-parse", "HEAD~1"], cwd=upstream, check=True, capture_output=True, text=True
    ).stdout.strip()
    lines: list[str] = []
    commit = fetch_dataset(tmp_path / "clone", source=str(upstream), log=lines.append)
    assert commit == published
    assert check_dataset(tmp_path / "clone") == 56
    assert f"commit {published} matches the manifest" in lines[-1]
    with pytest.raises(UserError, match="exists and is not empty"):
        fetch_dataset(tmp_path / "clone", source=str(upstream))
