"""The simulation end to end on a tiny config: run directory contents, shared iteration 0,
and a run interrupted and resumed equal to an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_OVERRIDES

from activeseg.acquisition import strategies_of
from activeseg.config import Config, load_yaml, with_overrides
from activeseg.data.prepare import prepare
from activeseg.errors import UserError
from activeseg.files import read_records
from activeseg.learners import ModelLearner
from activeseg.presets import preset
from activeseg.runtime import resolve
from activeseg.simulation import simulate
from activeseg.simulation.rundir import RunDirectory
from activeseg.simulation.tasks import SimulatedOracle, learner_data
from activeseg.validation import validate


def run_quietly(config: Config, out: Path, resume: bool = False) -> Path:
    return simulate(config, out, resume=resume, progress=False, log=lambda line: None)


def all_records(run: Path, pattern: str = "records-*.jsonl") -> dict[str, list[dict[str, Any]]]:
    """Records per file, without wall-clock timings."""
    return {
        path.name: [{k: v for k, v in r.items() if k != "seconds"} for r in read_records(path)]
        for path in sorted(run.glob(pattern))
    }


@pytest.fixture(scope="module")
def finished_run(tiny_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted tiny run (about 2 s); tests only read it."""
    return run_quietly(tiny_config, tmp_path_factory.mktemp("sim") / "uninterrupted")


def test_run_directory_holds_config_split_records_checkpoints_and_maps(
    finished_run: Path, tiny_config: Config
) -> None:
    names = {p.relative_to(finished_run).as_posix() for p in finished_run.rglob("*")}
    assert {"config.yaml", "split.json", "run.lock"} <= names
    for strategy in ("random", "std_edt"):
        for rep in (0, 1):
            assert f"records-{strategy}-rep{rep}.jsonl" in names
            assert f"checkpoints/{strategy}-rep{rep}.pt" in names
    # Maps of every scoring iteration of std_edt; random has no map.
    maps = sorted(n for n in names if n.startswith("maps/"))
    assert maps == [f"maps/std_edt-rep{r}-it{i:02d}.npz" for r in (0, 1) for i in (0, 1)]
    assert load_yaml(finished_run / "config.yaml") == tiny_config
    assert not [n for n in names if n.endswith(".tmp")]


def test_records_hold_one_line_per_iteration_with_the_expected_fields(
    finished_run: Path, tiny_config: Config
) -> None:
    records = all_records(finished_run)
    assert len(records) == 4
    for name, rows in records.items():
        assert [r["iteration"] for r in rows] == [0, 1, 2]
        for r in rows:
            assert {"strategy", "repetition", "iteration", "selected", "test_dice"} <= set(r)
            assert f"records-{r['strategy']}-rep{r['repetition']}.jsonl" == name
            assert 0.0 <= r["test_dice"] <= 1.0
            assert len(r["test_dice_per_patch"]) == tiny_config.data.n_test
            assert r["train_steps"] == tiny_config.train.steps_for(r["n_labelled"])
        assert [len(r["selected"]) for r in rows] == [1, 1, 0]
        assert [r["n_labelled"] for r in rows] == [2, 3, 4]


def test_the_seconds_show_what_the_test_evaluation_costs(finished_run: Path) -> None:
    """The evaluation's two parts, the test metrics and the test-set MC statistics, are
    timed inside ``eval`` (issue 17.4)."""
    for path in finished_run.glob("records-*.jsonl"):
        for r in read_records(path):
            s = r["seconds"]
            assert set(s) == {"train", "eval", "score", "test_metrics", "test_mc"}
            assert s["test_metrics"] > 0 and s["test_mc"] > 0
            assert s["test_metrics"] + s["test_mc"] <= s["eval"]


def test_labelled_patches_come_from_initial_and_pool_only(finished_run: Path) -> None:
    split = json.loads((finished_run / "split.json").read_text())
    held_out = set(split["val"]) | set(split["test"])
    assert len(split["initial"]) == 2 and len(split["pool"]) == 6
    for rows in all_records(finished_run).values():
        for r in rows:
            assert r["labelled"][:2] == split["initial"]
            assert set(r["selected"]) <= set(split["pool"])
            assert not (set(r["labelled"]) | set(r["selected"])) & held_out


def test_iteration_zero_is_identical_across_strategies(finished_run: Path) -> None:
    records = all_records(finished_run)
    for rep in (0, 1):
        first = [records[f"records-{s}-rep{rep}.jsonl"][0] for s in ("random", "std_edt")]
        shared = {
            k: v
            for k, v in first[0].items()
            if k not in ("strategy", "selected", "selected_scores")
        }
        assert shared == {k: first[1][k] for k in shared}
    rep0, rep1 = (records[f"records-random-rep{r}.jsonl"][0] for r in (0, 1))
    assert rep0["seed"] != rep1["seed"]
    assert rep0["final_loss"] != rep1["final_loss"]  # repetitions do differ


def test_std_edt_picks_the_top_scored_pool_patch(finished_run: Path) -> None:
    with np.load(finished_run / "maps" / "std_edt-rep0-it00.npz") as maps:
        ids, scores = maps["ids"], maps["scores"]
        assert maps["map"].shape == maps["std"].shape == (6, 64, 64)
    record = all_records(finished_run)["records-std_edt-rep0.jsonl"][0]
    assert record["selected"] == [int(ids[np.argmax(scores)])]
    assert record["selected_scores"] == [float(scores.max())]


def interrupt_after(monkeypatch: pytest.MonkeyPatch, n_records: int) -> None:
    """Make the run directory raise KeyboardInterrupt instead of writing record n + 1."""
    original = RunDirectory.append_record
    written = 0

    def append_then_stop(
        self: RunDirectory, strategy: str, repetition: int, record: dict[str, Any]
    ) -> None:
        nonlocal written
        if written == n_records:
            raise KeyboardInterrupt
        written += 1
        original(self, strategy, repetition, record)

    monkeypatch.setattr(RunDirectory, "append_record", append_then_stop)


@pytest.mark.parametrize("n_records", [1, 7])
def test_a_resumed_run_equals_an_uninterrupted_one(
    finished_run: Path,
    tiny_config: Config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    n_records: int,
) -> None:
    out = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        interrupt_after(patch, n_records)
        with pytest.raises(KeyboardInterrupt):
            run_quietly(tiny_config, out)
    assert sum(len(rows) for rows in all_records(out).values()) == n_records
    run_quietly(tiny_config, out, resume=True)

    assert all_records(out, "*.jsonl") == all_records(finished_run, "*.jsonl")
    for name in ("random-rep0", "random-rep1", "std_edt-rep0", "std_edt-rep1"):
        a = torch.load(finished_run / "checkpoints" / f"{name}.pt")
        b = torch.load(out / "checkpoints" / f"{name}.pt")
        assert a["iteration"] == b["iteration"] == 2
        assert all(torch.equal(a["models"][0][k], b["models"][0][k]) for k in a["models"][0])
    for path in sorted((finished_run / "maps").iterdir()):
        with np.load(path) as a, np.load(out / "maps" / path.name) as b:
            assert sorted(a.files) == sorted(b.files)
            assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_resuming_a_finished_run_changes_nothing(finished_run: Path, tiny_config: Config) -> None:
    before = {p.name: p.read_bytes() for p in finished_run.glob("records-*.jsonl")}
    run_quietly(tiny_config, finished_run, resume=True)
    assert {p.name: p.read_bytes() for p in finished_run.glob("records-*.jsonl")} == before


def test_an_existing_run_without_resume_is_a_user_error(
    finished_run: Path, tiny_config: Config
) -> None:
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        run_quietly(tiny_config, finished_run)


def test_resume_with_another_config_names_the_changed_key(
    finished_run: Path, tiny_config: Config
) -> None:
    changed = with_overrides(tiny_config, {"scoring.mc_samples": 4})
    with pytest.raises(UserError, match=r"other settings \(scoring.mc_samples: 3 -> 4\)"):
        run_quietly(changed, finished_run, resume=True)


def test_a_run_directory_in_use_is_refused(tiny_config: Config, tmp_path: Path) -> None:
    with RunDirectory(tmp_path, tiny_config, resume=False):
        with pytest.raises(UserError, match="in use by another activeseg process"):
            run_quietly(tiny_config, tmp_path, resume=True)
    assert all_records(tmp_path) == {}


def test_bad_data_leaves_no_run_directory(tiny_config: Config, tmp_path: Path) -> None:
    config = with_overrides(tiny_config, {"data.source": str(tmp_path / "missing")})
    with pytest.raises(UserError, match="is not a directory"):
        run_quietly(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"loop.strategies": "random,bold"}, "unknown strategy 'bold'"),
        ({"loop.strategies": "random,random"}, "must be distinct"),
        ({"loop.iterations": 7}, r"7 iterations x k=1 need 7 pool patches but data.n_pool is 6"),
        ({"loop.query_size": 0}, r"loop.query_size \(k\) must be >= 1"),
        ({"loop.repetitions": 0}, "loop.repetitions must be >= 1"),
        ({"scoring.mc_samples": 1}, "scoring.mc_samples must be >= 2"),
        (
            {"data.patch_size": 30},
            r"data.patch_size 30 must be a multiple of 2\*\*\(model.depth-1\) = 4",
        ),
        ({"train.loss": "focal"}, "train.loss must be one of auto, dice, dice_ce, wbce"),
        ({"train.fg_weight": 0}, r"train.fg_weight must be in \(0, 1\)"),
        ({"model.dropout": 1.0}, r"model.dropout must be in \[0, 1\)"),
        ({"scoring.edt": "inside"}, "scoring.edt must be one of border, foreground"),
    ],
)
def test_validate_rejects_inconsistent_settings(
    tiny_config: Config, overrides: dict[str, Any], message: str
) -> None:
    config = with_overrides(tiny_config, overrides)
    with pytest.raises(UserError, match=message):
        validate(config)
        strategies_of(config)  # the strategy names, checked against the config


def test_invalid_settings_are_rejected_before_the_run_directory_exists(
    tiny_config: Config, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match="train.loss"):
        run_quietly(with_overrides(tiny_config, {"train.loss": "focal"}), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_prepare_standardises_each_source_image_by_its_own_statistics(
    tiny_config: Config,
) -> None:
    data = prepare(tiny_config.data)
    images, source = data.images.numpy(), data.patches.source
    assert len(np.unique(source)) > 1
    for k in np.unique(source):  # train, val and test sources alike: no set's statistics leak
        rows = images[source == k].astype(np.float64)
        assert abs(rows.mean()) < 1e-4 and abs(rows.std() - 1) < 1e-3
    raw = data.patches.images[source == source[0]]
    expected = (raw - raw.mean()) / raw.std()
    np.testing.assert_allclose(images[source == source[0]], expected, rtol=1e-4, atol=1e-4)
    assert (
        SimulatedOracle(data.masks).reveal(np.array([5, 1])).tolist() == data.masks[[5, 1]].tolist()
    )


def test_new_models_depend_on_their_seed_only(tiny_config: Config) -> None:
    learner = ModelLearner(
        learner_data(prepare(tiny_config.data)), tiny_config, resolve("cpu", "fp32")
    )
    state = torch.random.get_rng_state()
    a, b, c = learner.new_model(1), learner.new_model(1), learner.new_model(2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.head.weight, c.head.weight)
    with pytest.raises(RuntimeError, match="fit\\(\\) must run before"):
        learner.evaluate()


def test_the_tiny_overrides_survive_the_command_line_as_strings() -> None:
    """The CLI passes strings; the overrides used here must survive that path too."""
    as_strings = {k: str(v) for k, v in TINY_OVERRIDES.items()}
    assert with_overrides(preset("demo"), as_strings) == with_overrides(
        preset("demo"), TINY_OVERRIDES
    )


# --------------------------------------------------------------------------- warm start

WARM = {"train.init": "warm", "train.warm_epochs": 1, "train.warm_lr": 1e-3}


@pytest.fixture(scope="module")
def warm_run(tiny_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_quietly(with_overrides(tiny_config, WARM), tmp_path_factory.mktemp("warm") / "run")


def test_warm_runs_fine_tune_after_iteration_zero_on_their_own_schedule(
    warm_run: Path, finished_run: Path, tiny_config: Config
) -> None:
    warm, scratch = all_records(warm_run), all_records(finished_run)
    for name, records in warm.items():
        assert [r["init"] for r in records] == ["scratch", "warm", "warm"]
        steps = tiny_config.train.steps_per_epoch
        first = tiny_config.train.steps_for(records[0]["n_labelled"])
        assert [r["train_steps"] for r in records] == [first, steps, steps]
        assert records[0] == scratch[name][0]  # iteration 0 trains from scratch in both
        assert records[1]["test_dice"] != scratch[name][1]["test_dice"]
    bound = read_records(warm_run / "upper_bound.jsonl")
    assert [r["init"] for r in bound] == ["scratch", "scratch"]


def test_warm_fit_starts_from_the_previous_weights(tiny_config: Config) -> None:
    config = with_overrides(tiny_config, WARM)
    data = prepare(config.data)
    learner = ModelLearner(learner_data(data), config, resolve("cpu", "fp32"), progress=False)
    ids = data.split.initial
    learner.start(None)
    learner.fit(ids, data.masks[ids], seed=1)
    first = {k: v.clone() for k, v in learner.model.state_dict().items()}
    assert learner.started_from is None
    info = learner.fit(ids, data.masks[ids], seed=2)
    assert info["init"] == "warm" and learner.started_from is not None
    assert all(torch.equal(first[k], learner.started_from[k]) for k in first)
    tuned = learner.model.state_dict()
    assert not all(torch.equal(first[k], tuned[k]) for k in first)
    learner.start(None)
    assert learner.fit(ids, data.masks[ids], seed=2)["init"] == "scratch"


@pytest.mark.parametrize("n_records", [1, 4])
def test_a_resumed_warm_run_equals_an_uninterrupted_one(
    warm_run: Path,
    tiny_config: Config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    n_records: int,
) -> None:
    """Interrupted after 1 record, iteration 1 is checkpointed but not recorded: the resumed
    iteration 1 must tune iteration 0's weights, not its own."""
    config, out = with_overrides(tiny_config, WARM), tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        interrupt_after(patch, n_records)
        with pytest.raises(KeyboardInterrupt):
            run_quietly(config, out)
    run_quietly(config, out, resume=True)
    assert all_records(out, "*.jsonl") == all_records(warm_run, "*.jsonl")
    for path in sorted((warm_run / "checkpoints").iterdir()):
        a, b = torch.load(path), torch.load(out / "checkpoints" / path.name)
        assert all(torch.equal(a["models"][0][k], b["models"][0][k]) for k in a["models"][0])


# --------------------------------------------------------------------------- committees


@pytest.fixture(scope="module")
def committee_config(tiny_config: Config) -> Config:
    return with_overrides(
        tiny_config,
        {
            "loop.strategies": "random,ensemble,svgd_mi,bald@svgd",
            "loop.repetitions": 1,
            "committee.members": 2,
        },
    )


@pytest.fixture(scope="module")
def committee_run(committee_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_quietly(committee_config, tmp_path_factory.mktemp("sim") / "committees")


def test_committee_records_and_checkpoints(committee_run: Path) -> None:
    records = all_records(committee_run)
    for name, kind in (("ensemble", "ensemble"), ("svgd_mi", "svgd"), ("bald@svgd", "svgd")):
        rows = records[f"records-{name}-rep0.jsonl"]
        assert len(rows) == 3
        for r in rows:
            assert len(r["test_member_dice"]) == 2
            assert 0.0 <= r["test_member_disagreement"] <= 1.0
            assert r["test_uncertainty_auroc"] is None or 0 <= r["test_uncertainty_auroc"] <= 1
        checkpoint = torch.load(committee_run / "checkpoints" / f"{name}-rep0.pt")
        assert len(checkpoint["models"]) == 2 and checkpoint["committee"] == kind
    for name in ("svgd_mi", "bald@svgd"):
        for r in records[f"records-{name}-rep0.jsonl"]:
            assert r["svgd"] and all(h["driving"] > 0 and h["repulsive"] > 0 for h in r["svgd"])
    assert "svgd" not in records["records-ensemble-rep0.jsonl"][0]
    # svgd_mi's ranking scores are H_norm - MI_norm, within [-1, 1]
    for r in records["records-svgd_mi-rep0.jsonl"][:-1]:
        assert -1.0 <= r["selected_scores"][0] <= 1.0
    # one SVGD training per iteration 0 whatever the score; members are distinct networks
    first = {n: rows[0] for n, rows in records.items()}
    a, b = first["records-svgd_mi-rep0.jsonl"], first["records-bald@svgd-rep0.jsonl"]
    assert a["svgd"] == b["svgd"] and a["test_member_dice"] == b["test_member_dice"]
    members = torch.load(committee_run / "checkpoints" / "ensemble-rep0.pt")["models"]
    assert not torch.equal(members[0]["head.weight"], members[1]["head.weight"])


def test_a_resumed_committee_run_equals_an_uninterrupted_one(
    committee_run: Path, committee_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 5)
        with pytest.raises(KeyboardInterrupt):
            run_quietly(committee_config, out)
    run_quietly(committee_config, out, resume=True)
    assert all_records(out, "*.jsonl") == all_records(committee_run, "*.jsonl")


def test_keep_policy_end_to_end(tiny_config: Config, tmp_path: Path) -> None:
    config = with_overrides(
        tiny_config,
        {"loop.pool_policy": "keep", "loop.repetitions": 1, "loop.iterations": 3,
         "loop.strategies": "std_sum", "data.n_pool": 1},
    )  # fmt: skip
    records = all_records(run_quietly(config, tmp_path / "keep"))["records-std_sum-rep0.jsonl"]
    assert [r["n_labelled"] for r in records] == [2, 3, 4, 5]
    assert [r["n_annotated"] for r in records] == [2, 3, 3, 3]  # one pool patch, re-chosen
    assert [r["pool_size"] for r in records] == [1, 1, 1, 1]


def test_a_resume_on_changed_data_is_refused_even_with_the_same_split(
    tiny_config: Config, finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``split.json`` holds a digest of every patch: data edited under the same file names
    (same ids, same split) must not be resumed silently."""
    from activeseg.simulation import run as run_module

    assert len(json.loads((finished_run / "split.json").read_text())["data_sha256"]) == 64

    def edited(cfg: Any) -> Any:
        data = prepare(cfg)
        data.patches.images[0, 0, 0, 0] += 0.01
        return data

    monkeypatch.setattr(run_module, "prepare", edited)
    with pytest.raises(UserError, match="differs from the split the data gives now"):
        run_quietly(tiny_config, finished_run, resume=True)


def test_the_synthetic_test_images_are_not_chosen_by_hardness() -> None:
    """Regression: the phantom chose its hard images with the split's own first draw, so the
    test set held exactly the hard images (test Dice ~0.5, validation ~0.98)."""
    from activeseg.data.phantom import hard_flags
    from activeseg.data.synthetic import phantom_seed

    hard_tests = []
    for seed in range(8):
        config = with_overrides(preset("demo"), {"data.split_seed": seed})
        split = prepare(config.data).split
        hard = hard_flags(12, phantom_seed(config.data))
        hard_tests += [bool(hard[int(name.rsplit("-", 1)[1])]) for name in split.test_sources]
    assert 0 < sum(hard_tests) < len(hard_tests)  # some test images hard, some not
