"""Report: verdict arithmetic on hand-made records, uncertainty-quality metrics, and the
report of a tiny simulated run checked against its records (recomputed here independently)."""

from __future__ import annotations

import base64
import csv
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage, stats

from activeseg.cli import main
from activeseg.config import Config, load_yaml, with_overrides
from activeseg.data.prepare import prepare
from activeseg.metrics import auroc, reliability, uncertainty_quality
from activeseg.report.build import write_report
from activeseg.report.context import Context
from activeseg.report.records import Run
from activeseg.report.sections import verdict_section
from activeseg.report.verdict import (
    Paired,
    Spread,
    StrategyCurves,
    aulc,
    compute_verdict,
    count_axons,
    paired_test,
    patches_to_reach,
    repetitions_needed,
    sentences,
    verdict,
)
from activeseg.simulation import simulate

# ----------------------------------------------------------------------------- arithmetic


def test_patches_to_reach_first_crossing_and_never() -> None:
    added = np.array([0.0, 1.0, 2.0, 3.0])
    dice = np.array([0.5, 0.6, 0.8, 0.7])
    assert patches_to_reach(added, dice, 0.6) == 1.0  # >= counts
    assert patches_to_reach(added, dice, 0.75) == 2.0  # first crossing, even if it falls back
    assert patches_to_reach(added, dice, 0.9) is None  # never reached
    assert patches_to_reach(added, np.array([np.nan, 0.9, 0.9, 0.9]), 0.8) == 1.0


def test_aulc_is_the_mean_dice_over_the_budget() -> None:
    # trapezoids (0.55 + 0.7 + 0.75) / 3 x-units
    assert aulc(np.array([0.0, 1, 2, 3]), np.array([0.5, 0.6, 0.8, 0.7])) == pytest.approx(2 / 3)
    # k = 2: x spacing 2, area 2 * (0.5 + 0.9) / 2 + 2 * (0.9 + 0.7) / 2 = 3.0, over 4
    assert aulc(np.array([0.0, 2, 4]), np.array([0.5, 0.9, 0.7])) == pytest.approx(0.75)
    assert aulc(np.array([0.0]), np.array([0.42])) == 0.42


def test_paired_test_matches_scipy() -> None:
    a, b = [0.70, 0.66, 0.71, 0.69], [0.60, 0.65, 0.62, 0.64]
    expected = stats.ttest_rel(a, b)
    p = paired_test(a, b)
    assert p.p == pytest.approx(expected.pvalue)
    assert p.mean == pytest.approx(np.mean(np.subtract(a, b)))
    assert math.isnan(paired_test([0.7], [0.6]).p)
    assert paired_test([0.75, 0.5], [0.5, 0.25]).p == 0.0  # identical non-zero differences


def test_spread_text() -> None:
    assert Spread((1.0, 3.0)).text(1) == "2.0 ± 1.4"
    assert Spread((1.0, None, 3.0)).text(1) == "2.0 ± 1.4 (2/3 reached)"
    assert Spread((1.0, None, 3.0)).text(1, short=True) == "2.0 ± 1.4 (2/3)"
    assert Spread((None, None)).text() == "not reached (0/2)"
    assert Spread(()).text() == "n/a"


def _record(
    strategy: str, rep: int, it: int, dice: float, labelled: list[int], selected: int
) -> dict[str, Any]:
    return {
        "strategy": strategy,
        "repetition": rep,
        "iteration": it,
        "n_labelled": len(labelled),
        "labelled": labelled,
        "selected": [selected] if it < 2 else [],
        "test_dice": dice,
    }


def _hand_made_run(tmp_path: Path) -> Run:
    """Initial patches 0, 1; 2 iterations of k = 1; 2 repetitions; upper bound Dice 0.8."""
    curves = {  # strategy -> repetition -> (Dice at x = 0, 1, 2; selected ids)
        "random": {0: ([0.50, 0.60, 0.70], [2, 3]), 1: ([0.50, 0.62, 0.72], [4, 5])},
        "std_edt": {0: ([0.50, 0.72, 0.74], [6, 7]), 1: ([0.50, 0.66, 0.75], [2, 3])},
    }
    records = []
    for name, reps in curves.items():
        for rep, (dice, picks) in reps.items():
            for it in range(3):
                labelled = [0, 1, *picks[:it]]
                sel = picks[it] if it < 2 else -1
                records.append(_record(name, rep, it, dice[it], labelled, sel))
    split = {"initial": [0, 1], "pool": [2, 3, 4, 5, 6, 7], "val": [8], "test": [9]}
    upper = [{"repetition": r, "n_labelled": 8, "test_dice": 0.8} for r in (0, 1)]
    config = with_overrides(Config(), {"loop.iterations": 2, "loop.repetitions": 2})
    return Run(tmp_path, config, split, records, upper)


AXONS = {2: 4, 3: 6, 4: 1, 5: 2, 6: 10, 7: 3}


def test_verdict_of_hand_made_records(tmp_path: Path) -> None:
    minutes = {patch: 3.0 * axons for patch, axons in AXONS.items()}  # 3 min per axon
    v = compute_verdict(_hand_made_run(tmp_path), minutes)
    assert v is not None
    assert v.baseline_target == pytest.approx(0.71)  # mean final Dice of random
    assert v.upper_target == pytest.approx(0.76)  # 95 % of 0.8: nobody reaches it
    random, edt = v.strategies
    assert random.to_baseline.values == (None, 2.0)  # 0.70 < 0.71 never; 0.72 at x = 2
    assert edt.to_baseline.values == (1.0, 2.0)
    assert edt.to_upper.values == (None, None)
    assert edt.to_upper.text() == "not reached (0/2)"
    # hours: first n added patches' axons x 3 min: rep 0 [6] -> 10, rep 1 [2, 3] -> 10
    assert edt.hours_to_baseline.values == pytest.approx((0.5, 0.5))
    assert random.hours_to_baseline.values == (None, pytest.approx(0.15))  # [4, 5] -> 3
    assert edt.hours_budget.values == pytest.approx((0.65, 0.5))  # [6, 7], [2, 3]
    assert random.aulc.values == pytest.approx((0.60, 0.615))
    assert edt.aulc.values == pytest.approx((0.67, 0.6425))
    paired = edt.versus_baseline
    assert paired is not None and not paired.clear  # 2 repetitions, p ~ 0.26
    assert paired.p == pytest.approx(stats.ttest_rel([0.67, 0.6425], [0.60, 0.615]).pvalue)
    text = " ".join(sentences(v))
    assert "within noise" in text and "not reached (0/2)" in text


def test_verdict_says_when_a_strategy_is_clearly_better() -> None:
    added = np.arange(4.0)
    base = np.array([[0.5, 0.55, 0.60, 0.65], [0.5, 0.56, 0.61, 0.66], [0.5, 0.54, 0.6, 0.64]])
    better = base + np.array([0.0, 0.10, 0.09, 0.05])
    v = verdict([StrategyCurves("random", added, base), StrategyCurves("std_edt", added, better)])
    assert v.upper_target is None and v.strategies[1].to_upper.text() == "n/a"
    assert v.strategies[1].to_baseline.values == (1.0, 1.0, 2.0)  # target 0.65; 0.64 at x = 1
    (sentence,) = sentences(v)
    assert sentence.startswith("std_edt learns faster than random")
    assert "within noise" not in sentence


def test_count_axons_counts_8_connected_myelin_rings() -> None:
    def rings(*columns: int) -> np.ndarray:
        """Rings (sheaths, 1 pixel thick) of 5 x 5 pixels whose left edge is at ``columns``."""
        mask = np.zeros((7, 16), dtype=np.uint8)
        for c in columns:
            mask[1:6, c : c + 5] = 1
        for c in columns:
            mask[2:5, c + 1 : c + 4] = 0
        return mask

    diagonal = np.pad(np.eye(4, dtype=np.uint8), ((0, 3), (0, 12)))  # corners touch: one
    masks = [rings(1), rings(1, 8), rings(1, 5), diagonal, np.zeros((7, 16), np.uint8)]
    # two apart -> 2; sharing a column (touching sheaths merge, an undercount) -> 1
    assert count_axons(np.stack(masks)[:, None]).tolist() == [1, 2, 1, 1, 0]


# ----------------------------------------------------------------------------- metrics


def test_auroc_equals_pairwise_count_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    labels = rng.random(200) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
    assert auroc(scores, labels) == pytest.approx(pairs / (len(pos) * len(neg)))
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert auroc(np.ones(3), np.zeros(3, dtype=bool)) is None


def test_reliability_and_ece_by_hand() -> None:
    rel = reliability(np.array([0.05, 0.15, 0.95, 1.0]), np.array([0, 1, 1, 1]))
    assert rel.counts.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert rel.frac_fg[[0, 1, 9]].tolist() == [0.0, 1.0, 1.0]
    # (1 * 0.05 + 1 * 0.85 + 2 * 0.025) / 4
    assert rel.ece == pytest.approx(0.2375)


def test_uncertainty_quality_of_a_perfect_detector() -> None:
    import torch

    target = torch.tensor([[[[1, 0, 1, 0]]]], dtype=torch.uint8)
    mean = torch.tensor([[[[0.9, 0.6, 0.4, 0.1]]]])  # pixels 1 and 2 are wrong
    std = torch.tensor([[[[0.0, 0.3, 0.2, 0.1]]]])
    quality = uncertainty_quality(mean, std, target)
    assert quality["uncertainty_auroc"] == 1.0
    assert sum(quality["reliability"]["counts"]) == 4


# ----------------------------------------------------------------------------- end to end


FIGURES = [
    "learning_dice",
    "learning_iou",
    "learning_sensitivity",
    "learning_specificity",
    "learning_precision",
    "maps_std_edt",
    "selection",
    "pool_scores",
    "uncertainty_quality",
    "reliability",
    "cost",
]
TABLES = [
    "records",
    "learning_curves",
    "verdict",
    "verdict_per_repetition",
    "selection",
    "pool_scores",
    "uncertainty_maps",
    "reliability",
    "cost",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_config: Config) -> Path:
    """A tiny simulation with the upper bound and test-set uncertainty on."""
    config = with_overrides(tiny_config, {"loop.upper_bound": True})
    out = tmp_path_factory.mktemp("report") / "run"
    simulate(config, out, progress=False, log=lambda line: None)
    assert main(["report", str(out)]) == 0
    return out


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_upper_bound_is_stored_apart_from_strategy_records(run_dir: Path) -> None:
    names = sorted(p.name for p in run_dir.glob("records-*.jsonl"))
    assert names == [f"records-{s}-rep{r}.jsonl" for s in ("random", "std_edt") for r in (0, 1)]
    upper = _jsonl(run_dir / "upper_bound.jsonl")
    split = json.loads((run_dir / "split.json").read_text())
    assert [u["repetition"] for u in upper] == [0, 1]
    assert all(u["n_labelled"] == len(split["initial"]) + len(split["pool"]) for u in upper)


def test_records_carry_test_uncertainty_quality(run_dir: Path) -> None:
    record = _jsonl(run_dir / "records-random-rep0.jsonl")[0]
    split = json.loads((run_dir / "split.json").read_text())
    auc = record["test_uncertainty_auroc"]
    assert auc is None or 0.0 <= auc <= 1.0
    assert 0.0 <= record["test_ece"] <= 1.0
    assert sum(record["test_reliability"]["counts"]) == len(split["test"]) * 64 * 64


def test_report_files_exist_and_html_embeds_every_figure(run_dir: Path) -> None:
    folder = run_dir / "report"
    for name in FIGURES:
        assert (folder / f"{name}.png").read_bytes().startswith(b"\x89PNG")
        assert (folder / f"{name}.svg").stat().st_size > 0
    for name in TABLES:
        assert (folder / f"{name}.csv").exists(), name
    page = (folder / "report.html").read_text()
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(FIGURES)
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "within noise" in page or "learns" in page


@pytest.mark.parametrize("metric", ["test_dice", "test_ece"])
def test_learning_curve_csv_equals_records(run_dir: Path, metric: str) -> None:
    rows = _csv(run_dir / "report" / "learning_curves.csv")
    split = json.loads((run_dir / "split.json").read_text())
    checked = 0
    for strategy in ("random", "std_edt"):
        records = [r for p in run_dir.glob(f"records-{strategy}-*") for r in _jsonl(p)]
        for it in range(3):
            values = [r[metric] for r in records if r["iteration"] == it]
            n = len(split["initial"]) + it
            (row,) = [
                r
                for r in rows
                if (r["strategy"], r["metric"], r["n_labelled"]) == (strategy, metric, str(n))
            ]
            assert float(row["mean"]) == pytest.approx(np.mean(values), rel=1e-12)
            assert float(row["std"]) == pytest.approx(np.std(values, ddof=1), rel=1e-12)
            checked += 1
    upper = [u[metric] for u in _jsonl(run_dir / "upper_bound.jsonl")]
    (row,) = [r for r in rows if (r["strategy"], r["metric"]) == ("upper_bound", metric)]
    assert float(row["mean"]) == pytest.approx(np.mean(upper), rel=1e-12)
    assert checked == 6


def test_verdict_csv_equals_records(run_dir: Path) -> None:
    rows = _csv(run_dir / "report" / "verdict_per_repetition.csv")
    split = json.loads((run_dir / "split.json").read_text())
    masks = prepare(load_yaml(run_dir / "config.yaml").data).patches.masks
    by_run = {
        (s, r): _jsonl(run_dir / f"records-{s}-rep{r}.jsonl")
        for s in ("random", "std_edt")
        for r in (0, 1)
    }
    target = np.mean([by_run["random", r][-1]["test_dice"] for r in (0, 1)])
    for row in rows:
        records = by_run[row["strategy"], int(row["repetition"])]
        dice = np.array([r["test_dice"] for r in records])
        added = np.array([r["n_labelled"] for r in records]) - len(split["initial"])
        assert float(row["aulc"]) == pytest.approx(np.trapezoid(dice, added) / added[-1])
        assert float(row["final"]) == dice[-1]
        reached = added[dice >= target]
        expected = float(reached[0]) if len(reached) else None
        assert (float(row["to_baseline"]) if row["to_baseline"] else None) == expected
        picks = records[-1]["labelled"][len(split["initial"]) :]
        axons = sum(ndimage.label(masks[p, 0], np.ones((3, 3)))[1] for p in picks)
        assert float(row["hours_budget"]) == pytest.approx(axons * 3 / 60)


def test_report_without_the_data_leaves_out_images_and_hours(run_dir: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved, ignore=shutil.ignore_patterns("report", "checkpoints"))
    config = (moved / "config.yaml").read_text().replace("source: synthetic", "source: /no/data")
    (moved / "config.yaml").write_text(config)
    page = write_report(moved, tmp_path / "elsewhere" / "r.html").read_text()
    assert "Data not loaded" in page
    rows = _csv(tmp_path / "elsewhere" / "verdict.csv")
    assert all(r["hours_budget_known"] == "0" for r in rows)
    assert (tmp_path / "elsewhere" / "maps_std_edt.png").exists()  # maps are in the run


# ----------------------------------------------------------------------------- keep, ranking


def test_keep_policy_measures_x_in_unique_annotated_patches(tmp_path: Path) -> None:
    """Under ``keep`` rep 0 re-chooses patch 2 (no annotation cost): its unique annotated
    count is 2, 3, 3 while the training set grows 2, 3, 4. Its AULC and patches-to-reach use
    added = 0, 1, 1; rep 1 annotates two new patches (added 0, 1, 2)."""
    records = []
    for rep, picks, dice in ((0, [2, 2], [0.5, 0.7, 0.8]), (1, [3, 4], [0.5, 0.6, 0.7])):
        for it in range(3):
            labelled = [0, 1, *picks[:it]]
            r = _record("random", rep, it, dice[it], labelled, picks[it] if it < 2 else -1)
            records.append({**r, "n_annotated": len(set(labelled))})
    split = {"initial": [0, 1], "pool": [2, 3, 4], "val": [8], "test": [9]}
    config = with_overrides(
        Config(), {"loop.iterations": 2, "loop.repetitions": 2, "loop.pool_policy": "keep"}
    )
    run = Run(tmp_path, config, split, records, [])
    assert run.annotated("random", 3).tolist() == [[2, 3, 3], [2, 3, 4]]
    assert run.x_axis("random", 3).tolist() == [2.0, 3.0, 3.5]
    v = compute_verdict(run, {2: 3.0, 3: 6.0, 4: 12.0})  # 1, 2, 4 axons x 3 min
    assert v is not None
    (s,) = v.strategies
    # one x-range for all, [0, 2]: rep 0 (x 0, 1, 1) holds its final 0.8 from x = 1 to 2,
    # (0.6 + 0.8) / 2; rep 1 (x 0, 1, 2): (0.55 + 0.65) / 2
    assert s.aulc.values == pytest.approx((0.7, 0.6))
    assert s.to_baseline.values == (1.0, None)  # target 0.75: rep 0 at its 3rd point, x = 1
    assert s.hours_budget.values == pytest.approx((1 * 3 / 60, 6 * 3 / 60))  # patch 2 once
    assert v.budget == 2.0


def test_verdict_table_ranks_strategies_by_aulc(tmp_path: Path) -> None:
    """std_edt's AULC (0.656) is above random's (0.608): it is listed first, ranked 1,
    although the run lists random first."""
    run = _hand_made_run(tmp_path)
    assert run.strategies == ["random", "std_edt"]
    section = verdict_section(Context(run, tmp_path, None, None, compute_verdict(run, None)))
    (table,) = section.tables
    assert table.header[:4] == ["rank", "strategy", "final test Dice", "AULC"]
    assert [row[:2] for row in table.rows] == [["1", "std_edt"], ["2", "random"]]
    assert table.rows[0][3] == "0.656 ± 0.019"


def test_repetitions_needed_matches_the_power_tables() -> None:
    """One-sample (paired) t-test, two-sided alpha 0.05, power 0.8: effect size d = 1 needs
    10 pairs and d = 0.5 needs 34 (Cohen 1988; G*Power's "t tests - means: difference from
    constant"). Scale does not matter, only mean / std."""
    assert repetitions_needed(Paired(0.010, 0.010, 3, 0.3)) == 10
    assert repetitions_needed(Paired(-0.004, 0.008, 5, 0.3)) == 34
    assert repetitions_needed(Paired(0.02, 0.0, 3, 0.0)) == 2  # no spread at all
    assert repetitions_needed(Paired(0.0, 0.01, 3, 1.0)) is None  # no difference to detect
    assert repetitions_needed(Paired(0.01, math.nan, 1, math.nan)) is None


def _curves(initial: list[float], step: float) -> StrategyCurves:
    dice = np.array([[d, d + step, d + 2 * step] for d in initial])
    return StrategyCurves("random", np.arange(3.0), dice)


def test_the_verdict_first_says_when_labels_cannot_move_the_dice() -> None:
    """Iteration 0 varies by 0.02 over repetitions (same data, other seeds); a whole-pool
    model only 0.03 better cannot show any saving: the first sentence says so and names the
    fixes."""
    flat = verdict([_curves([0.70, 0.72, 0.74], 0.005)], upper_dice=[0.73, 0.75, 0.77])
    room = flat.headroom
    assert room is not None and room.noise == pytest.approx(0.02)
    assert room.gain.mean == pytest.approx(0.03) and room.clear is False
    first = sentences(flat)[0]
    assert first.startswith("This run cannot show a saving")
    assert "0.020" in first and "train.epochs" in first and "more repetitions" in first
    steep = verdict([_curves([0.70, 0.71, 0.70], 0.02)], upper_dice=[0.82, 0.83, 0.81])
    assert steep.headroom is not None and steep.headroom.clear is True
    assert sentences(steep)[0].startswith("Headroom: the whole-pool model beats iteration 0")
    assert verdict([_curves([0.7], 0.01)], upper_dice=[0.8]).headroom.clear is None  # type: ignore[union-attr]
    assert verdict([_curves([0.7, 0.71], 0.01)]).headroom is None  # no upper bound


def test_aulc_shares_one_x_range_and_survives_nothing_new_annotated() -> None:
    """With ``pool_policy = keep`` a repetition may annotate fewer new patches (re-picks):
    its curve keeps its last Dice to the common end; no new patch at all is no division by
    zero."""
    assert aulc(np.array([0.0, 1.0]), np.array([0.5, 0.7]), end=3.0) == pytest.approx(
        (0.6 + 0.7 + 0.7) / 3
    )
    assert aulc(np.array([0.0, 0.0, 0.0]), np.array([0.5, 0.6, 0.7])) == pytest.approx(0.6)
    keep = StrategyCurves(
        "random", np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 2.0]]), np.array([[0.5, 0.7, 0.8]] * 2)
    )
    v = verdict([keep])
    assert v.strategies[0].aulc.values == pytest.approx(((0.6 + 0.8) / 2, (0.6 + 0.75) / 2))
