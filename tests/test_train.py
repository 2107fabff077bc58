"""Training: it learns the phantom, keeps the best validation weights, stops on divergence;
augmentation warps image and mask alike; the weighted BCE has the paper's weights."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import Phantom, Trained, make_unet
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from activeseg import train
from activeseg.config import Config, TrainConfig, with_overrides
from activeseg.errors import UserError
from activeseg.runtime import Runtime, torch_generator
from activeseg.train import (
    Labelled,
    WeightedBCE,
    augment,
    evaluate,
    fit,
    make_loss,
    make_optimizer,
    predict,
)
from activeseg.validation import validate


def small_fit(
    phantom: Phantom,
    runtime: Runtime,
    *,
    seed: int = 0,
    init_seed: int = 0,
    n: int = 8,
    **overrides: Any,
) -> tuple[nn.Module, train.FitResult]:
    """A few steps on ``n`` training patches (about 0.1 s); ``init_seed`` initialises the
    model, ``seed`` seeds the training generator."""
    settings: dict[str, Any] = {
        "lr": 1e-2,
        "epochs": 6,
        "steps_per_epoch": 1,
        "batch_size": 4,
        "validate_every": 2,
        **overrides,
    }
    model = make_unet(init_seed, base_filters=4)
    p = phantom
    result = fit(
        model,
        Labelled(p.images[p.train[:n]], p.masks[p.train[:n]]),
        Labelled(p.images[p.val], p.masks[p.val]),
        TrainConfig(**settings),
        runtime,
        torch_generator(seed),
    )
    return model, result


# --------------------------------------------------------------------------- learning


def test_fit_reaches_high_dice_on_held_out_phantom_images(
    trained: Trained, phantom: Phantom, runtime: Runtime
) -> None:
    """80 steps of a depth-3, 8-filter U-Net; test patches come from an unseen image.
    Measured here: test Dice 0.955-0.980 for seeds 0-3."""
    metrics = evaluate(
        trained.model, phantom.images[phantom.test], phantom.masks[phantom.test], runtime
    )
    assert metrics["dice"] > 0.9
    assert trained.result.best_val_dice > 0.9


def test_fit_keeps_the_best_validation_weights(
    phantom: Phantom, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scripted validation Dice 0.3, 0.9, 0.5: the returned weights are those of step 4."""
    scripted = iter([0.3, 0.9, 0.5])
    snapshots: list[dict[str, torch.Tensor]] = []

    def fake_evaluate(model: nn.Module, *args: object, **kwargs: object) -> dict[str, float]:
        snapshots.append(copy.deepcopy(model.state_dict()))
        return {"dice": next(scripted)}

    monkeypatch.setattr(train, "evaluate", fake_evaluate)
    model, result = small_fit(phantom, runtime)
    assert [(s, d) for s, _, d in result.history] == [(2, 0.3), (4, 0.9), (6, 0.5)]
    assert (result.best_val_dice, result.best_step, result.steps) == (0.9, 4, 6)
    final = model.state_dict()
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[2][k]) for k in final)


@pytest.mark.parametrize(
    ("patience", "history", "steps"),
    [
        (2, [(2, 0.3), (4, 0.9), (6, 0.5), (8, 0.9)], 8),  # a tie is no improvement
        (3, [(2, 0.3), (4, 0.9), (6, 0.5), (8, 0.9), (10, 0.4)], 10),
        (0, [(2, 0.3), (4, 0.9), (6, 0.5), (8, 0.9), (10, 0.4), (12, 0.2)], 12),
    ],
)
def test_fit_stops_after_patience_validations_without_a_better_dice(
    phantom: Phantom,
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
    patience: int,
    history: list[tuple[int, float]],
    steps: int,
) -> None:
    scripted = iter([0.3, 0.9, 0.5, 0.9, 0.4, 0.2])
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: {"dice": next(scripted)})
    _, result = small_fit(phantom, runtime, epochs=12, patience=patience)
    assert [(s, d) for s, _, d in result.history] == history
    assert (result.steps, result.best_step, result.best_val_dice) == (steps, 4, 0.9)


def test_the_warm_schedule_replaces_epochs_lr_and_patience() -> None:
    cfg = TrainConfig(epochs=100, lr=1e-2, patience=0, warm_epochs=7, warm_lr=1e-4, warm_patience=2)
    warm = cfg.warm()
    assert (warm.epochs, warm.lr, warm.patience) == (7, 1e-4, 2)
    assert (warm.batch_size, warm.steps_per_epoch, warm.loss) == (5, 2, cfg.loss)


@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(epochs=40, warm_epochs=15, steps_per_epoch=None, batch_size=16, min_steps=150,
                    max_steps=1000),
        TrainConfig(epochs=60, warm_epochs=7, steps_per_epoch=None, batch_size=4, min_steps=200),
        TrainConfig(epochs=10, warm_epochs=3, steps_per_epoch=2, min_steps=7, max_steps=9),
        TrainConfig(epochs=3500, warm_epochs=500),  # the paper's defaults
    ],
)  # fmt: skip
def test_the_warm_schedule_is_its_fraction_of_a_fresh_training_for_every_n(
    cfg: TrainConfig,
) -> None:
    warm = cfg.warm()
    for n in (1, 5, 16, 17, 60, 100, 159, 400, 10_000):
        fresh = cfg.steps_for(n)
        assert warm.steps_for(n) == math.ceil(fresh * cfg.warm_epochs / cfg.epochs), n


def test_the_warm_bounds_scale_by_warm_epochs_over_epochs_rounded_up() -> None:
    cfg = TrainConfig(epochs=40, warm_epochs=15, steps_per_epoch=None, batch_size=16,
                      min_steps=150, max_steps=1000)  # fmt: skip
    warm = cfg.warm()
    assert (warm.min_steps, warm.max_steps) == (57, 375)  # 56.25 rounded up, 375 exactly
    assert [warm.steps_for(n) for n in (2, 64, 96, 10_000)] == [57, 60, 90, 375]
    assert TrainConfig(epochs=3500, warm_epochs=500).warm().min_steps == 1  # 1/7 -> 1


def test_describe_steps_names_the_warm_fraction_only_for_warm_runs() -> None:
    cfg = TrainConfig(epochs=40, warm_epochs=12, warm_lr=1e-3)
    assert "fine-tune" not in cfg.describe_steps()
    assert (
        "; warm iterations fine-tune 12/40 of that at lr 0.001"
        in replace(cfg, init="warm").describe_steps()
    )


def test_best_val_dice_is_what_the_returned_model_scores(
    phantom: Phantom, runtime: Runtime
) -> None:
    """A high learning rate makes validation Dice jump around (measured: best at step 4 of 12
    here); whatever happens, the returned model scores the reported best on the val set."""
    model, result = small_fit(phantom, runtime, lr=0.1, epochs=12)
    assert result.best_val_dice == max(d for _, _, d in result.history)
    assert (result.best_step, result.best_val_dice) in {(s, d) for s, _, d in result.history}
    val = evaluate(model, phantom.images[phantom.val], phantom.masks[phantom.val], runtime)
    assert val["dice"] == result.best_val_dice
    assert not model.training


def test_fit_is_reproducible_from_its_generator(phantom: Phantom, runtime: Runtime) -> None:
    a, result_a = small_fit(phantom, runtime, seed=0)
    b, result_b = small_fit(phantom, runtime, seed=0)
    assert result_a.history == result_b.history
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    _, result_c = small_fit(phantom, runtime, seed=1)  # same initial weights
    assert result_c.history != result_a.history


def test_fit_validates_at_the_end_when_the_interval_is_longer(
    phantom: Phantom, runtime: Runtime
) -> None:
    _, result = small_fit(phantom, runtime, epochs=3, validate_every=50)
    assert [s for s, _, _ in result.history] == [3]
    assert result.best_step == 3


def test_fit_trains_on_fewer_patches_than_a_batch(phantom: Phantom, runtime: Runtime) -> None:
    _, result = small_fit(phantom, runtime, n=2, batch_size=8, epochs=2)
    assert result.steps == 2
    assert math.isfinite(result.final_loss)


def test_fit_without_patches_is_a_user_error(phantom: Phantom, runtime: Runtime) -> None:
    with pytest.raises(UserError, match="no labelled patches"):
        small_fit(phantom, runtime, n=0)


def test_huge_learning_rate_stops_with_diverged(phantom: Phantom, runtime: Runtime) -> None:
    with pytest.raises(UserError, match=r"training diverged: loss is nan .*lower train.lr"):
        small_fit(phantom, runtime, lr=1e12)


def test_non_finite_input_stops_with_diverged(phantom: Phantom, runtime: Runtime) -> None:
    images = phantom.images[phantom.train[:4]].clone()
    images[0, 0, 0, 0] = float("nan")
    cfg = TrainConfig(epochs=1, batch_size=4, augment=False)
    with pytest.raises(UserError, match="training diverged: loss is nan at step 1"):
        fit(
            make_unet(base_filters=4),
            Labelled(images, phantom.masks[phantom.train[:4]]),
            Labelled(phantom.images[phantom.val], phantom.masks[phantom.val]),
            cfg,
            runtime,
            torch_generator(0),
        )


def test_batches_cover_every_patch_once_per_epoch() -> None:
    order: Iterator[torch.Tensor] = train._batches(10, 5, torch_generator(0))
    for _ in range(3):
        epoch = torch.cat([next(order), next(order)])
        assert sorted(epoch.tolist()) == list(range(10))


def test_batches_draw_with_replacement_from_a_small_set() -> None:
    batch = next(train._batches(3, 8, torch_generator(0)))
    assert batch.shape == (8,)
    assert set(batch.tolist()) <= {0, 1, 2}


def test_predict_restores_the_training_mode(
    trained: Trained, phantom: Phantom, runtime: Runtime
) -> None:
    model = copy.deepcopy(trained.model).train()
    probs = predict(model, phantom.images[phantom.test[:3]], runtime)
    assert model.training
    assert probs.shape == (3, 1, 32, 32)
    assert probs.dtype == torch.float32
    assert float(probs.min()) >= 0.0 and float(probs.max()) <= 1.0


# --------------------------------------------------------------------------- losses


def test_weighted_bce_weights_foreground_03_and_background_07() -> None:
    """Two pixels: myelin with logit 0 (BCE ln 2), background with logit 2 (BCE
    ln(1 + e^2)); mean of the weighted losses."""
    logits = torch.tensor([[[[0.0, 2.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]]])
    expected = (0.3 * math.log(2.0) + 0.7 * math.log1p(math.exp(2.0))) / 2
    assert WeightedBCE(0.3)(logits, target).item() == pytest.approx(expected, rel=1e-6)
    assert make_loss("wbce", 0.3)[0](logits, target).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("fg_weight", [0.0, 1.0, -0.5])
def test_weighted_bce_rejects_weights_outside_the_open_interval(fg_weight: float) -> None:
    with pytest.raises(ValueError, match="fg_weight"):
        WeightedBCE(fg_weight)


@pytest.mark.parametrize(
    ("name", "first", "second"),
    [
        ("dice", DiceLoss, DiceLoss),
        ("wbce", WeightedBCE, WeightedBCE),
        ("dice_then_wbce", DiceLoss, WeightedBCE),
    ],
)
def test_make_loss_gives_the_losses_of_each_half(name: str, first: type, second: type) -> None:
    a, b = make_loss(name, 0.3)
    assert isinstance(a, first) and isinstance(b, second)


def test_unknown_loss_is_a_user_error() -> None:
    with pytest.raises(
        UserError, match="train.loss: 'focal' is not one of auto, dice, dice_ce, wbce"
    ):
        make_loss("focal", 0.3)


# --------------------------------------------------------------------------- augmentation


def blob_masks(n: int = 6, size: int = 32) -> torch.Tensor:
    """Off-centre rectangles, so that every flip, shift or rotation changes the mask."""
    masks = torch.zeros(n, 1, size, size)
    for i in range(n):
        masks[i, 0, 3 + i : 14 + i, 4 : 12 + 2 * i] = 1.0
    return masks


def test_augment_applies_the_same_warp_to_image_and_mask() -> None:
    masks = blob_masks()
    images, warped_masks = augment(masks.clone(), masks, torch_generator(0))
    agreement = ((images >= 0.5).float() == warped_masks).float().mean()
    assert agreement > 0.999
    assert not torch.equal(warped_masks, masks)


def test_augment_keeps_masks_binary_and_shapes() -> None:
    images = torch.randn(6, 1, 32, 32, generator=torch_generator(1))
    masks = blob_masks()
    out_images, out_masks = augment(images, masks, torch_generator(2))
    assert out_images.shape == images.shape and out_masks.shape == masks.shape
    assert out_masks.dtype == masks.dtype
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
    assert 0 < float(out_masks.sum()) < out_masks.numel()


def test_augment_does_not_modify_its_inputs() -> None:
    images = torch.randn(6, 1, 32, 32, generator=torch_generator(1))
    masks = blob_masks()
    images_before, masks_before = images.clone(), masks.clone()
    augment(images, masks, torch_generator(2))
    assert torch.equal(images, images_before) and torch.equal(masks, masks_before)


def test_augment_is_reproducible_from_the_generator() -> None:
    images = torch.randn(6, 1, 32, 32, generator=torch_generator(1))
    masks = blob_masks()
    a = augment(images, masks, torch_generator(7))
    b = augment(images, masks, torch_generator(7))
    c = augment(images, masks, torch_generator(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_augment_warps_each_item_differently() -> None:
    image = torch.randn(1, 1, 32, 32, generator=torch_generator(1))
    images = image.expand(4, 1, 32, 32).clone()
    out, _ = augment(images, (images > 0).float(), torch_generator(3))
    assert len({tuple(item.flatten().tolist()) for item in out}) == 4


def learning_rates(cfg: TrainConfig, total: int) -> list[float]:
    """The learning rate of each of ``total`` steps of :func:`make_optimizer`'s schedule."""
    optimizer, schedule = make_optimizer([nn.Parameter(torch.zeros(1))], cfg, total)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def test_keras_decay_is_the_papers_time_decay() -> None:
    cfg = TrainConfig(lr=1e-2, epochs=50)
    rates = learning_rates(cfg, 100)
    assert rates[0] == pytest.approx(1e-2)
    assert rates[99] == pytest.approx(1e-2 / (1 + 99 * 1e-2 / 50))


def test_cosine_decays_to_a_hundredth_after_a_linear_warm_up() -> None:
    cfg = TrainConfig(lr=1e-2, schedule="cosine", warmup_steps=10)
    rates = learning_rates(cfg, 200)
    assert rates[:10] == pytest.approx([1e-2 * (i + 1) / 10 for i in range(10)], rel=1e-3)
    assert max(rates) == pytest.approx(1e-2, rel=1e-3)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False))  # then decreasing
    assert rates[-1] == pytest.approx(1e-4, rel=0.01)  # lr / 100 at the end
    assert rates[105] == pytest.approx(1e-4 + (1e-2 - 1e-4) / 2, rel=0.01)  # half way


def test_poly_is_nnunets_schedule() -> None:
    rates = learning_rates(TrainConfig(lr=1e-2, schedule="poly"), 100)
    assert rates[50] == pytest.approx(1e-2 * 0.5**0.9)
    assert rates[-1] == pytest.approx(1e-2 * 0.01**0.9)


def test_training_length_follows_the_labelled_set_within_its_bounds() -> None:
    cfg = TrainConfig(epochs=40, steps_per_epoch=None, batch_size=16, min_steps=150, max_steps=1000)
    assert [cfg.steps_for(n) for n in (1, 16, 60, 64, 400, 10_000)] == [
        150, 150, 160, 160, 1000, 1000
    ]  # fmt: skip
    assert TrainConfig(epochs=7, steps_per_epoch=3).steps_for(1000) == 21  # fixed length
    assert "40 x ceil(N / 16) clamped to [150, 1000]" in cfg.describe_steps()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"train.schedule": "step"}, "train.schedule must be one of keras, cosine, poly"),
        ({"train.min_steps": 0}, "train.min_steps"),
        ({"train.min_steps": 10, "train.max_steps": 5}, "train.min_steps"),
        ({"train.steps_per_epoch": 0}, "train.steps_per_epoch must be >= 1"),
        ({"train.warmup_steps": -1}, "train.warmup_steps"),
    ],
)
def test_bad_schedules_are_refused(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(UserError, match=match):
        validate(with_overrides(Config(), overrides))


def test_dice_ce_is_monais_dice_ce_and_auto_picks_it_for_several_classes() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=gen)
    labels = torch.randint(3, (2, 1, 8, 8), generator=gen).float()
    expected = DiceCELoss(softmax=True, to_onehot_y=True, include_background=False, batch=True)
    for name in ("dice_ce", "auto"):
        first, second = make_loss(name, 0.3, channels=3)
        assert first is second
        assert torch.allclose(first(logits, labels), expected(logits, labels))
    dice_only = make_loss("dice", 0.3, channels=3)[0](logits, labels)
    assert not torch.allclose(dice_only, expected(logits, labels))
    binary = (labels > 0).float()
    one = logits[:, :1]
    assert torch.allclose(
        make_loss("dice_ce", 0.3)[0](one, binary),
        DiceLoss(sigmoid=True, batch=True)(one, binary)
        + F.binary_cross_entropy_with_logits(one, binary),
    )
    assert isinstance(make_loss("auto", 0.3)[0], DiceLoss)  # binary: the paper's Dice
