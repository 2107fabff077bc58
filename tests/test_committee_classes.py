"""Committees over C classes: the committee's Dice, its members' Dice and disagreement on a
hand-computed 3-class example, committee statistics and maps over C softmax channels, a
3-class 3D simulation of every committee strategy, and a 2D axon/myelin project."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PROJECT_SETTINGS, TINY_3D
from PIL import Image
from torch import nn

from activeseg.acquisition import strategies_of
from activeseg.acquisition.strategies import bald_map, entropy_map
from activeseg.annotation.project import Project
from activeseg.cli import main
from activeseg.committee import committee_dice, committee_statistics, disagreement
from activeseg.config import with_overrides
from activeseg.data.phantom import make_phantom
from activeseg.files import read_records
from activeseg.learners import CommitteeLearner, LearnerData
from activeseg.presets import preset
from activeseg.runtime import Runtime
from activeseg.scoring import entropy
from activeseg.simulation import simulate
from activeseg.train import Labelled

# One image of 1 x 4 pixels, 3 classes. Members A and B agree except at pixel 2 (A: class 2,
# B: class 1); their mean there is (0.1, 0.4, 0.5) -> class 2.
A = [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.1, 0.1, 0.8]]
B = [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.6, 0.3], [0.1, 0.1, 0.8]]
TRUTH = [1, 1, 1, 2]
# committee labels 0 1 2 2: class 1 tp 1 fn 2 -> Dice 2/4; class 2 tp 1 fp 1 -> 2/3
# member A (labels 0 1 2 2): the same, 7/12; member B (0 1 1 2): class 1 tp 2 fn 1 -> 4/5,
# class 2 -> 1; mean 9/10. The members disagree on 1 pixel of 4.
COMMITTEE_DICE, MEMBER_DICE = (1 / 2 + 2 / 3) / 2, [(1 / 2 + 2 / 3) / 2, (4 / 5 + 1) / 2]


class Fixed(nn.Module):
    """A member whose softmax is ``probs`` ``[4, 3]`` (pixels, classes) for any input."""

    def __init__(self, probs: list[list[float]]) -> None:
        super().__init__()
        p = torch.tensor(probs, dtype=torch.float64).T.reshape(1, 3, 1, 4)
        self.register_buffer("logits", p.log().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1, -1, -1)


def _example() -> tuple[list[nn.Module], torch.Tensor, torch.Tensor]:
    masks = torch.tensor(TRUTH, dtype=torch.float32).view(1, 1, 1, 4)
    return [Fixed(A), Fixed(B)], torch.zeros(1, 1, 1, 4), masks


def test_committee_dice_and_disagreement_over_three_classes(runtime: Runtime) -> None:
    models, images, masks = _example()
    assert committee_dice(models, images, masks, runtime) == pytest.approx(COMMITTEE_DICE)
    probs = torch.stack([m(images).softmax(1) for m in models])
    assert disagreement(probs) == pytest.approx(1 / 4)
    # one sigmoid channel: thresholded 0 1 1 and 0 0 1 differ at 1 pixel of 3
    sigmoid = torch.tensor([[0.2, 0.6, 0.9], [0.3, 0.4, 0.8]]).view(2, 1, 1, 1, 3)
    assert disagreement(sigmoid) == pytest.approx(1 / 3)


def test_a_committee_learner_evaluates_three_classes(runtime: Runtime) -> None:
    models, images, masks = _example()
    data = LearnerData(images, Labelled(images, masks), Labelled(images, masks))
    learner = CommitteeLearner(data, preset("cpu-3d"), runtime, "ensemble")
    learner.models = models
    out = learner.evaluate()
    assert out["test_dice"] == pytest.approx(COMMITTEE_DICE)
    assert (out["test_dice_class1"], out["test_dice_class2"]) == pytest.approx((1 / 2, 2 / 3))
    assert out["test_member_dice"] == pytest.approx(MEMBER_DICE)
    assert out["test_member_disagreement"] == pytest.approx(1 / 4)


def test_committee_maps_of_three_classes_are_those_of_mc_samples(runtime: Runtime) -> None:
    """The members' softmax channels are MC samples: entropy of the 3-class mean; BALD (and
    so jsd@<committee>) is positive exactly where the members disagree (pixel 2)."""
    models, images, _ = _example()
    stats = committee_statistics(models, images, runtime)
    probs = torch.tensor([A, B], dtype=torch.float64).transpose(1, 2).reshape(2, 1, 3, 1, 4)
    torch.testing.assert_close(stats.mean, probs.mean(0).float())
    torch.testing.assert_close(entropy_map(stats), entropy(probs.mean(0)).float())
    bald = bald_map(stats)[0, 0]
    assert float(bald[2]) > 0.01
    torch.testing.assert_close(bald[[0, 1, 3]], torch.zeros(3), atol=1e-6, rtol=0)


STRATEGIES = ("ensemble", "svgd", "svgd_mi", "jsd@ensemble")


def test_every_committee_strategy_runs_a_three_class_3d_simulation(tmp_path: Path) -> None:
    config = with_overrides(
        preset("cpu-3d"),
        {
            **TINY_3D,
            "model.base_filters": 4,
            "train.epochs": 4,
            "train.validate_every": 2,
            "committee.members": 2,
            "loop.strategies": ",".join(STRATEGIES),
            "loop.pool_policy": "keep",
            "loop.iterations": 1,
            "loop.repetitions": 1,
        },
    )
    assert [s.name for s in strategies_of(config)] == list(STRATEGIES)  # no refusal
    out = simulate(config, tmp_path / "run", progress=False, log=lambda line: None)
    for name in STRATEGIES:
        records = read_records(out / f"records-{name}-rep0.jsonl")
        assert [r["n_labelled"] for r in records] == [2, 3]
        for r in records:
            mean = (r["test_dice_class1"], r["test_dice_class2"])
            assert r["test_dice"] == pytest.approx(np.mean(mean))
            assert len(r["test_member_dice"]) == 2
            assert 0.0 <= r["test_member_disagreement"] <= 1.0
        assert np.isfinite(records[0]["selected_scores"]).all()
        if name.startswith("svgd"):
            assert all(h["bandwidth"] > 0 for h in records[0]["svgd"])


def test_a_committee_scores_a_two_dimensional_axon_myelin_project(tmp_path: Path) -> None:
    """Projects are 2D (image files): committees over the classes of data.labels."""
    samples = make_phantom(n_images=3, size=64, seed=8, labels=("axon", "myelin"))
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i, s in enumerate(samples):
        name = f"im{i}"
        Image.fromarray(np.round(s.image * 255).astype(np.uint8)).save(images / f"{name}.png")
        if i != 1:
            for k, label in enumerate(("axon", "myelin"), start=1):
                mask = ((s.mask == k) * 255).astype(np.uint8)
                Image.fromarray(mask).save(masks / f"{name}_seg-{label}-manual.png")
    settings = [s for s in PROJECT_SETTINGS if not s.startswith("train.epochs")]
    settings += ["train.epochs=4", "data.labels=axon,myelin", "committee.members=2"]
    project = tmp_path / "p"
    assert main(["init", str(project), "--images", str(images), "--masks", str(masks),
                 "--holdout", "im2", "--preset", "demo",
                 *(a for s in settings for a in ("--set", s))]) == 0  # fmt: skip
    for strategy, committee in (("svgd_mi", "svgd"), ("jsd@ensemble", "ensemble")):
        queries = Project(project).query(1, strategy=strategy)
        assert [q.strategy for q in queries] == [strategy]
        learner = Project(project).load_learner()
        assert learner.committee == committee
        assert len(learner.models) == 2
        assert learner.probabilities(torch.zeros(1, 1, 32, 32)).shape == (1, 3, 32, 32)
