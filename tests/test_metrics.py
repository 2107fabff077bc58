"""Metrics: hand-computed confusion counts and metric values; the 0/0 convention."""

from __future__ import annotations

import math

import pytest
import torch
from monai.metrics import get_confusion_matrix

from activeseg.metrics import METRIC_NAMES, confusion, metrics_from_confusion, summarize

# Three 2x4 items. Item 0, by hand (row, col):
#   tp (0,0) (1,0) = 2; fp (0,1) = 1; fn (0,2) (1,3) = 2; tn (0,3) (1,1) (1,2) = 3.
# Item 1: empty prediction, empty ground truth. Item 2: empty prediction, 3 true pixels.
PRED = torch.tensor(
    [
        [[1, 1, 0, 0], [1, 0, 0, 0]],
        [[0, 0, 0, 0], [0, 0, 0, 0]],
        [[0, 0, 0, 0], [0, 0, 0, 0]],
    ],
    dtype=torch.uint8,
).unsqueeze(1)
TARGET = torch.tensor(
    [
        [[1, 0, 1, 0], [1, 0, 0, 1]],
        [[0, 0, 0, 0], [0, 0, 0, 0]],
        [[1, 1, 0, 0], [0, 0, 0, 1]],
    ],
    dtype=torch.uint8,
).unsqueeze(1)
COUNTS = torch.tensor([[2, 1, 3, 2], [0, 0, 8, 0], [0, 0, 5, 3]])  # tp, fp, tn, fn

EXPECTED = [  # dice, iou, sensitivity, specificity, precision, accuracy
    (4 / 7, 2 / 5, 2 / 4, 3 / 4, 2 / 3, 5 / 8),
    (1.0, 1.0, 1.0, 1.0, 1.0, 1.0),  # 0/0 -> 1 everywhere but specificity/accuracy (8/8)
    (0.0, 0.0, 0.0, 1.0, 1.0, 5 / 8),  # precision 0/0 -> 1
]


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int64, torch.float32])
def test_confusion_hand_computed(dtype: torch.dtype) -> None:
    counts = confusion(PRED.to(dtype), TARGET.to(dtype))
    assert counts.dtype == torch.int64
    assert torch.equal(counts, COUNTS)


def test_confusion_agrees_with_monai_on_float_inputs() -> None:
    g = torch.Generator().manual_seed(0)
    pred = (torch.rand(4, 1, 9, 7, generator=g) > 0.5).float()
    target = (torch.rand(4, 1, 9, 7, generator=g) > 0.3).float()
    reference = get_confusion_matrix(pred, target)[:, 0].long()  # MONAI: [B, C, 4] float
    assert torch.equal(confusion(pred, target), reference)


def test_confusion_does_not_modify_inputs() -> None:
    pred, target = PRED.float(), TARGET.float()
    confusion(pred, target)
    assert torch.equal(pred, PRED.float()) and torch.equal(target, TARGET.float())


def test_confusion_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="must match"):
        confusion(PRED, TARGET[:2])
    with pytest.raises(ValueError, match="only 0 and 1"):
        confusion(PRED.float() * 0.7, TARGET)
    with pytest.raises(ValueError, match="only 0 and 1"):
        confusion(PRED, TARGET.float().fill_(float("nan")))


def test_metrics_hand_computed() -> None:
    metrics = metrics_from_confusion(COUNTS)
    assert tuple(metrics) == METRIC_NAMES
    for name, column in zip(METRIC_NAMES, zip(*EXPECTED, strict=True), strict=True):
        assert metrics[name].dtype == torch.float64
        assert metrics[name].tolist() == pytest.approx(column, abs=1e-15), name


def test_metrics_all_zero_counts_are_one_not_nan() -> None:
    metrics = metrics_from_confusion(torch.zeros(2, 3, 4, dtype=torch.int64))
    for value in metrics.values():
        assert value.shape == (2, 3)
        assert torch.equal(value, torch.ones(2, 3, dtype=torch.float64))


def test_metrics_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        metrics_from_confusion(torch.zeros(3, 3))


def test_summarize_pooled_and_per_patch_mean() -> None:
    counts = COUNTS.clone()
    summary = summarize(counts)
    assert torch.equal(counts, COUNTS)
    assert set(summary) == {k for n in METRIC_NAMES for k in (n, f"{n}_per_patch_mean")}
    # pooled counts: tp 2, fp 1, tn 16, fn 5
    pooled = (4 / 10, 2 / 8, 2 / 7, 16 / 17, 2 / 3, 18 / 24)
    for i, name in enumerate(METRIC_NAMES):
        assert summary[name] == pytest.approx(pooled[i], abs=1e-15), name
        mean = sum(row[i] for row in EXPECTED) / 3
        assert summary[f"{name}_per_patch_mean"] == pytest.approx(mean, abs=1e-15), name
        assert isinstance(summary[name], float) and not math.isnan(summary[name])


def test_summarize_rejects_empty() -> None:
    with pytest.raises(ValueError, match="N >= 1"):
        summarize(torch.zeros(0, 4, dtype=torch.int64))
