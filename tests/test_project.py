"""The human-in-the-loop file workflow on the phantom, driven through ``activeseg`` commands:
init, query, an "annotator" copying ground truth, import, retrain, query again, predict."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PROJECT_SETTINGS as SETTINGS
from PIL import Image

from activeseg.annotation.project import Project, estimate_gain
from activeseg.annotation.state import Region
from activeseg.cli import main
from activeseg.data.images import read_mask
from activeseg.data.phantom import make_phantom
from activeseg.data.sources import Sample


def _save(folder: Path, samples: list[Sample], masks: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s in samples:
        if masks:
            Image.fromarray(s.mask * 255).save(folder / f"{s.name}_seg-myelin-manual.png")
        else:
            Image.fromarray(np.round(s.image * 255).astype(np.uint8)).save(folder / f"{s.name}.png")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """Hard phantoms: two small labelled images (48², one 32-px patch each), three 128²
    unlabelled ones to query from, one labelled 128² image held out for validation."""
    root = tmp_path_factory.mktemp("phantom")
    small = make_phantom(n_images=2, size=48, seed=100, hard_fraction=1.0)
    big = make_phantom(n_images=4, size=128, seed=0, hard_fraction=1.0)
    named = [dataclasses.replace(s, name=f"small-{i}") for i, s in enumerate(small)]
    named += [dataclasses.replace(s, name=f"pool-{i}") for i, s in enumerate(big[:3])]
    named.append(dataclasses.replace(big[3], name="heldout"))
    _save(root / "images", named, masks=False)
    _save(root / "masks", [s for s in named if not s.name.startswith("pool")], masks=True)
    return root, {s.name: s.mask for s in named}


def _annotate(project: Path, truth: dict[str, np.ndarray]) -> list[str]:
    """The annotator: the ground truth of every pending region, saved where import looks."""
    ids = []
    for info in sorted((project / "to_annotate").glob("q*.json")):
        q = json.loads(info.read_text())
        region = Region(**q["region"])
        mask = region.crop(truth[region.image])
        Image.fromarray(mask * 255).save(project / "to_annotate" / q["mask_file"])
        ids.append(q["id"])
    return ids


def test_the_annotation_loop_on_the_phantom(
    data: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, truth = data
    project = tmp_path / "proj"
    base = ["--preset", "demo", *(a for s in SETTINGS for a in ("--set", s))]
    assert main(["init", str(project), "--images", str(root / "images"), "--masks",
                 str(root / "masks"), "--holdout", "heldout", *base]) == 0  # fmt: skip
    assert main(["query", str(project), "-k", "3", "--quiet"]) == 0
    files = sorted(p.name for p in (project / "to_annotate").iterdir())
    first = [f.removesuffix(".json") for f in files if f.endswith(".json")]
    assert len(first) == 3
    for qid in first:  # crop, pre-annotation, heatmap overlay, JSON
        for suffix in (".png", "_seg-myelin-pred.png", "_uncertainty.png", ".json"):
            assert f"{qid}{suffix}" in files
        assert "heldout" not in qid and "small" not in qid  # held out / annotated: never asked
        overlay = np.asarray(Image.open(project / "to_annotate" / f"{qid}_uncertainty.png"))
        assert overlay.shape == (32, 32, 3)

    assert _annotate(project, truth) == first
    bad = project / "to_annotate" / f"{first[0]}_seg-myelin-manual.png"
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(bad)  # the annotator botches one
    capsys.readouterr()
    assert main(["import", str(project)]) == 2
    captured = capsys.readouterr()
    assert "imported 2 mask(s)" in captured.out
    assert f"rejected {bad}: {bad} is 32x30 pixels but its region is 32x32" in captured.err
    state = Project(project).state()
    assert [a.id for a in state.annotations if a.source == "query"] == first[1:]
    assert [q.id for q in state.pending] == first[:1]  # the bad one waits, the good are kept
    assert (project / "to_annotate" / "imported" / f"{first[1]}.png").is_file()
    stored = read_mask(project / "annotations" / f"{first[1]}_seg-myelin-manual.png")
    region = state.annotations[-2].region
    assert np.array_equal(stored, region.crop(truth[region.image]))

    _annotate(project, truth)  # fixed
    assert main(["import", str(project)]) == 0
    assert main(["query", str(project), "-k", "3", "--quiet"]) == 0  # retrains, then queries
    state = Project(project).state()
    second = [q.id for q in state.pending]
    assert len(second) == 3 and not set(second) & set(first)
    done = [a.region for a in state.annotations]
    assert not any(q.region.overlaps(r) for q in state.pending for r in done)
    before, after = (r.val_dice for r in state.rounds)
    assert [r.n_patches for r in state.rounds] == [2, 5]
    assert after > before + 0.005, (before, after)  # 0.814 -> 0.825 here

    capsys.readouterr()
    assert main(["status", str(project)]) == 0
    status = capsys.readouterr().out
    assert "annotated regions: 5; waiting for annotation: 3" in status
    assert f"held-out Dice {after:.3f}" in status and "estimated held-out Dice gain" in status

    out = tmp_path / "pred"
    image = root / "images" / "heldout.png"
    assert main(["predict", str(project), str(image), "--out", str(out), "--uncertainty",
                 "--quiet"]) == 0  # fmt: skip
    pred = read_mask(out / "heldout_seg-myelin.png")
    assert pred.shape == (128, 128)
    dice = 2 * (pred & truth["heldout"]).sum() / (pred.sum() + truth["heldout"].sum())
    assert dice > 0.6
    assert (out / "heldout_uncertainty.tif").is_file()


def test_estimate_gain_follows_a_log_linear_learning_curve() -> None:
    curve = [(10, 0.5 + 0.1 * np.log(10)), (20, 0.5 + 0.1 * np.log(20))]
    assert estimate_gain(curve, 20) == pytest.approx(0.1 * np.log(2))
    assert estimate_gain(curve[:1], 5) is None  # one point: unknown
    assert estimate_gain([(10, 0.8), (20, 0.7)], 5) == 0.0  # falling: no promise of gain
    assert estimate_gain([(10, 0.5), (20, 0.99)], 1000) == pytest.approx(0.01)  # capped at 1


def _tiny(data: tuple[Path, dict[str, np.ndarray]], project: Path, *extra: str) -> int:
    root, _ = data
    fast = [s for s in SETTINGS if not s.startswith("train.epochs")] + ["train.epochs=5"]
    return main(["init", str(project), "--images", str(root / "images"), "--masks",
                 str(root / "masks"), "--preset", "demo",
                 *(a for s in fast for a in ("--set", s)), *extra])  # fmt: skip


def test_same_seed_same_queries_and_the_project_can_be_moved(
    data: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    for name in ("a", "b"):
        assert _tiny(data, tmp_path / name, "--seed", "3") == 0
    (tmp_path / "a").rename(tmp_path / "moved")  # paths inside are relative
    first, second = (Project(tmp_path / n).query(2) for n in ("moved", "b"))
    assert first == second
    assert len({q.region for q in first}) == 2


def test_bad_init_input_leaves_nothing_and_names_the_problem(
    data: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _tiny(data, tmp_path / "p", "--holdout", "pool-0") == 2
    assert "--holdout pool-0: a held-out image needs a mask" in capsys.readouterr().err
    assert _tiny(data, tmp_path / "p", "--holdout", "nope") == 2
    assert "--holdout nope: no such image" in capsys.readouterr().err
    volumes = ("--set", "data.spatial_dims=3", "--set", "train.augment=false")
    assert _tiny(data, tmp_path / "p", *volumes) == 2  # was accepted, then query crashed
    assert "data.spatial_dims=3: projects annotate 2D images only" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
    assert main(["status", str(tmp_path / "p")]) == 2
    assert "is not an activeseg project" in capsys.readouterr().err


def test_every_random_stream_of_a_project_lives_on_the_model_device(
    data: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: project training drew its dropout masks and batches from a CPU generator
    whatever the device (a CUDA model then fails). ``cpu:0`` stands in for a second device:
    every generator made while training and querying must be made on it."""
    project = tmp_path / "p"
    assert _tiny(data, project, "--set", "train.device=cpu:0") == 0
    made: list[torch.device] = []

    class Recording(torch.Generator):
        def __new__(cls, device: str | torch.device = "cpu") -> Recording:
            made.append(torch.device(device))
            return super().__new__(cls, device=device)

    monkeypatch.setattr(torch, "Generator", Recording)
    assert len(Project(project).query(2)) == 2
    assert made and set(made) == {torch.device("cpu:0")}


@pytest.mark.parametrize("strategy", ["max_cover", "ensemble", "svgd_mi"])
def test_strategies_of_any_kind_work_in_a_project(
    data: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, strategy: str
) -> None:
    """Regression: ``max_cover`` was accepted, then failed without features; committees were
    refused. A project scores with the simulation's learners and ``score_pool``."""
    project = tmp_path / "p"
    assert _tiny(data, project, "--set", "committee.members=2") == 0
    queries = Project(project).query(2, strategy=strategy)
    assert len(queries) == 2 and {q.strategy for q in queries} == {strategy}
    assert len({q.region for q in queries}) == 2
    p = Project(project)
    committee = p.strategy(strategy).committee
    assert p.state().rounds[-1].committee == committee
    learner = p.load_learner()
    assert learner.committee == committee
    assert len(learner.models) == (1 if committee is None else 2)
    assert p.status().up_to_date == (committee is None)  # the project's own is std_edt
