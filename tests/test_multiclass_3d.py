"""One U-Net in 2D or 3D; multi-class labels: metrics against hand-computed values, the
softmax loss, training a 3D U-Net on the 3D phantom, and a 3D multi-class simulation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_3D
from torch import nn

from activeseg.acquisition import strategies_of
from activeseg.config import with_overrides
from activeseg.data.patches import Normalizer, split_by_source
from activeseg.data.volume_phantom import make_volume_phantom
from activeseg.data.volumes import volume_patches
from activeseg.errors import UserError
from activeseg.metrics import per_item_dice, summarize, summarize_classes
from activeseg.model import UNet, mc_dropout, output_channels, predicted_labels
from activeseg.presets import preset
from activeseg.runtime import Runtime, torch_generator
from activeseg.scoring import mc_statistics
from activeseg.simulation import simulate
from activeseg.train import Labelled, class_confusion_counts, evaluate, fit, make_loss
from activeseg.validation import validate


def _unet3d(seed: int = 0, out_channels: int = 3, base_filters: int = 4) -> UNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet(1, out_channels, depth=3, base_filters=base_filters, spatial_dims=3)


def test_one_unet_class_builds_2d_and_3d_layers_with_the_same_parameter_names() -> None:
    two, three = UNet(1, 3, 3, 4, spatial_dims=2), UNet(1, 3, 3, 4, spatial_dims=3)
    assert two.state_dict().keys() == three.state_dict().keys()
    assert isinstance(three.stem[0], nn.Conv3d) and isinstance(two.stem[0], nn.Conv2d)
    assert isinstance(three.down[0][0], nn.MaxPool3d) and isinstance(
        three.up[0], nn.ConvTranspose3d
    )
    x = torch.randn(2, 1, 8, 12, 4)
    assert three.eval()(x).shape == (2, 3, 8, 12, 4)
    assert three.features(x).shape == (2, 16)
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        UNet(spatial_dims=1)


def test_3d_mc_dropout_passes_differ_and_plain_passes_repeat() -> None:
    model = _unet3d().eval()
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        with mc_dropout(model, torch_generator(0)):
            a, b = model(x), model(x)
    assert not torch.equal(a, b)


def test_mc_statistics_of_a_3d_multiclass_model(runtime: Runtime) -> None:
    model = _unet3d()
    images = torch.randn(3, 1, 8, 8, 8)
    stats = mc_statistics(model, images, [0, 1, 2], 4, 2, 0, runtime)
    assert stats.mean.shape == stats.std.shape == (3, 3, 8, 8, 8)
    torch.testing.assert_close(stats.mean.sum(1), torch.ones(3, 8, 8, 8))
    again = mc_statistics(model, images[1:2], [1], 4, 2, 0, runtime)
    torch.testing.assert_close(again.mean[0], stats.mean[1])


def test_predicted_labels_threshold_one_channel_and_argmax_several() -> None:
    assert predicted_labels(torch.tensor([[[0.2, 0.5, 0.9]]])).tolist() == [[0, 1, 1]]
    probs = torch.tensor([[[0.7, 0.1], [0.2, 0.3], [0.1, 0.6]]])  # [1, 3 classes, 2 voxels]
    assert predicted_labels(probs).tolist() == [[0, 2]]
    assert output_channels(2) == 1 and output_channels(3) == 3


def test_multiclass_metrics_match_hand_computed_values() -> None:
    # Two items, two foreground classes, (tp, fp, tn, fn):
    counts = torch.tensor(
        [
            [[3, 1, 10, 0], [0, 0, 14, 0]],  # class 2 absent and not predicted: dice 1
            [[1, 0, 12, 1], [2, 2, 8, 2]],
        ]
    )
    out = summarize_classes(counts)
    # pooled class 1: tp 4, fp 1, fn 1 -> dice 8/10; class 2: tp 2, fp 2, fn 2 -> dice 4/8
    assert out["dice_class1"] == pytest.approx(0.8)
    assert out["dice_class2"] == pytest.approx(0.5)
    assert out["dice"] == pytest.approx(0.65)
    # per item: (6/7, 1) and (2/3, 1/2) -> mean over items and classes
    assert out["dice_per_patch_mean"] == pytest.approx((6 / 7 + 1 + 2 / 3 + 0.5) / 4)
    assert out["iou_class2"] == pytest.approx(2 / 6)
    assert out["sensitivity_class1"] == pytest.approx(4 / 5)
    assert out["specificity_class2"] == pytest.approx(22 / 24)
    assert out["precision_class1"] == pytest.approx(4 / 5)
    assert out["accuracy_class1"] == pytest.approx(26 / 28)
    assert per_item_dice(counts) == pytest.approx([(6 / 7 + 1) / 2, (2 / 3 + 0.5) / 2])


def test_one_foreground_class_gives_exactly_the_binary_summary() -> None:
    counts = torch.tensor([[3, 1, 10, 0], [1, 0, 12, 1]])
    assert summarize_classes(counts[:, None]) == summarize(counts)


def test_class_confusion_counts_of_a_fixed_prediction(runtime: Runtime) -> None:
    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.full((1, 3, 1, 1, 4), -5.0)
            logits[0, 0, 0, 0, 0] = logits[0, 1, 0, 0, 1] = 5.0
            logits[0, 2, 0, 0, 2] = logits[0, 2, 0, 0, 3] = 5.0
            return logits  # labels [0, 1, 2, 2]

    masks = torch.tensor([[[[[0, 1, 1, 2]]]]])
    counts = class_confusion_counts(Fixed(), torch.zeros(1, 1, 1, 1, 4), masks, runtime)
    assert counts.tolist() == [[[1, 0, 2, 1], [1, 1, 2, 0]]]
    out = evaluate(Fixed(), torch.zeros(1, 1, 1, 1, 4), masks, runtime)
    assert out["dice_class1"] == pytest.approx(2 / 3) and out["dice_class2"] == pytest.approx(2 / 3)


def test_multiclass_dice_loss_is_low_for_the_right_labels_and_binary_only_losses_refuse() -> None:
    loss, _ = make_loss("dice", 0.3, channels=3)
    target = torch.tensor([0, 1, 2, 2]).reshape(1, 1, 4)
    right = torch.nn.functional.one_hot(target[:, 0], 3).permute(0, 2, 1).float() * 20
    assert float(loss(right, target.float())) < 1e-3
    assert float(loss(-right, target.float())) > 0.9
    with pytest.raises(UserError, match="binary only"):
        make_loss("wbce", 0.3, channels=3)


def test_3d_unet_learns_the_3d_phantom(runtime: Runtime) -> None:
    volumes = make_volume_phantom(n_volumes=14, shape=(16, 16, 16), classes=3, seed=0)
    patches = volume_patches(volumes, 16)
    split = split_by_source(patches, 0, 2, 4, None, seed=0)
    images = torch.from_numpy(Normalizer.fit(patches.images[split.train])(patches.images))
    masks = torch.from_numpy(patches.masks).float()
    model = _unet3d(base_filters=4)
    cfg = with_overrides(
        preset("cpu-3d"), {"train.epochs": 80, "train.lr": 1e-2, "train.validate_every": 20}
    ).train
    result = fit(
        model,
        Labelled(images[split.pool], masks[split.pool]),
        Labelled(images[split.val], masks[split.val]),
        cfg,
        runtime,
        torch_generator(0),
    )
    out = evaluate(model, images[split.test], masks[split.test], runtime)
    assert result.best_val_dice > 0.6
    assert out["dice"] > 0.6 and out["dice_class1"] > 0.5 and out["dice_class2"] > 0.5


def test_3d_settings_are_checked() -> None:
    base = preset("cpu-3d")
    for overrides, match in [
        ({"train.augment": True}, "train.augment is for 2D"),
        ({"data.spatial_dims": 2}, "num_classes > 2 needs volumes"),
        ({"data.clip": "5,1"}, "data.clip must be"),
        ({"data.spatial_dims": 4}, "spatial_dims must be 2 or 3"),
    ]:
        config = with_overrides(base, overrides)
        with pytest.raises(UserError, match=match):
            validate(config)
            strategies_of(config)


def test_nath_presets_hold_the_paper_values() -> None:
    hip, pan = preset("nath-hippocampus"), preset("nath-pancreas")
    assert (hip.train.lr, hip.train.batch_size, hip.train.steps_for(10), hip.loop.iterations) == (
        1e-3,
        8,
        1500,
        40,
    )
    assert (hip.data.patch_size, hip.data.clip, hip.data.n_initial, hip.data.n_val) == (
        64,
        (0.0, 99.5),  # the paper's [0, 2048] as a per-volume percentile window
        10,
        50,
    )
    assert hip.loop.query_size == 1 and not hip.train.augment and hip.data.clip_percentile
    assert hip.train.loss == pan.train.loss == "dice" and hip.train.schedule == "keras"
    assert (pan.train.lr, pan.train.steps_for(20), pan.data.spacing, pan.data.patch_size) == (
        4e-4,
        10000,
        4.0,
        48,
    )
    assert (pan.data.n_initial, pan.data.n_pool, pan.data.n_val, pan.data.n_test) == (
        20,
        201,
        30,
        30,
    )
    assert pan.data.clip == (-87.0, 199.0) and pan.loop.query_size == 5


@pytest.mark.slow
def test_a_3d_multiclass_simulation_records_per_class_metrics(tmp_path: Path) -> None:
    config = with_overrides(
        preset("cpu-3d"),
        {
            **TINY_3D,
            "model.base_filters": 4,
            "train.epochs": 4,
            "train.validate_every": 2,
            "scoring.mc_samples": 2,
            "loop.strategies": "jsd,max_cover",
            "scoring.cover_candidates": 3,
            "loop.repetitions": 1,
        },
    )
    simulate(config, tmp_path / "run", progress=False, log=lambda s: None)
    for name in ("jsd", "max_cover"):
        lines = (tmp_path / "run" / f"records-{name}-rep0.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert [r["n_labelled"] for r in records] == [2, 3, 4]
        for r in records:
            mean = (r["test_dice_class1"] + r["test_dice_class2"]) / 2
            assert r["test_dice"] == pytest.approx(mean)
            assert len(r["test_dice_per_patch"]) == 3
        assert np.isfinite(records[0]["selected_scores"]).all()
    # max_cover ranks its 3 candidates 3, 2, 1: the first greedy choice scores 3
    assert [r["selected_scores"] for r in records[:2]] == [[3.0], [3.0]]


@pytest.mark.parametrize("channels", [1, 3])
def test_saved_maps_hold_the_foreground_probability(tmp_path: Path, channels: int) -> None:
    """One sigmoid channel is p(foreground) as it is; of softmax channels, 0 is the
    background, so the maps hold 1 - p(background) (any foreground class) and its std."""
    from activeseg.acquisition import Scores
    from activeseg.loop import Chunk
    from activeseg.scoring import McStats
    from activeseg.simulation.rundir import RunDirectory
    from activeseg.simulation.tasks import _MapsSink

    g = torch.Generator().manual_seed(0)
    mean = torch.softmax(torch.randn(2, channels, 4, 4, 4, generator=g), 1)
    if channels == 1:
        mean = torch.sigmoid(mean)
    std = torch.rand(2, channels, 4, 4, 4, generator=g) * 0.1
    chunk = Chunk(0, 2, np.array([5, 7]), Scores(np.ones(2), std[:, 0]), McStats(mean, std, 4))
    with RunDirectory(tmp_path / "run", preset("demo"), resume=False) as run:
        sink = _MapsSink(run, "entropy", 0, enabled=True)
        sink(chunk)
        sink.commit()
        saved = np.load(run.maps_path("entropy", 0, 0))
    expected = mean[:, 0] if channels == 1 else 1.0 - mean[:, 0]
    np.testing.assert_allclose(saved["mean"], expected.half().numpy())
    np.testing.assert_allclose(saved["std"], std[:, 0].half().numpy())
