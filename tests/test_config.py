"""Config: the paper presets, typed overrides, YAML round trip, schema check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from activeseg.config import (
    SCHEMA_VERSION,
    Config,
    all_keys,
    from_dict,
    load_yaml,
    parse_assignments,
    save_yaml,
    to_dict,
    with_overrides,
)
from activeseg.errors import UserError
from activeseg.presets import PRESETS, preset
from activeseg.validation import validate

# Paper values (Lubrano di Scandalea et al., Tables II and III), field by field.
PAPER_COMMON: dict[str, Any] = {
    "data.patch_size": 512,
    "train.batch_size": 5,
    "train.steps_per_epoch": 2,
    "train.lr": 1e-2,
    "train.loss": "dice",
    "train.schedule": "keras",
    "train.warmup_steps": 0,
    "model.dropout": 0.2,
    "model.depth": 5,
    "model.base_filters": 32,
    "scoring.mc_samples": 50,
    "loop.iterations": 15,
    "loop.query_size": 1,
}
PAPER: dict[str, dict[str, Any]] = {
    "paper-sbem": {
        **PAPER_COMMON,
        "train.epochs": 3500,
        "data.n_initial": 5,
        "data.n_val": 10,
        "data.n_test": 10,
        "data.n_pool": 26,
        "loop.repetitions": 10,
    },
    "paper-tem": {
        **PAPER_COMMON,
        "train.epochs": 800,
        "data.n_initial": 2,
        "data.n_val": 2,
        "data.n_test": 20,
        "data.n_pool": 72,
        "loop.repetitions": 3,
    },
}


def get(config: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_presets_hold_the_paper_values(name: str) -> None:
    config = preset(name)
    actual = {key: get(config, key) for key in PAPER[name]}
    assert actual == PAPER[name]
    for n in (1, 5, 100):  # the paper's length does not follow the labelled-set size
        assert config.train.steps_for(n) == PAPER[name]["train.epochs"] * 2


def test_paper_tem_preset_reads_tem_images() -> None:
    assert preset("paper-tem").data.modality == "TEM"
    assert preset("paper-sbem").data.modality == "SEM"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_run_config(name: str) -> None:
    validate(preset(name))  # raises UserError if, e.g., iterations x k exceed the pool


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_presets_warm_schedule_is_shorter_than_a_fresh_training(name: str) -> None:
    train = preset(name).train  # (the default warm_epochs = 500 suits only long trainings)
    for n in (1, 2, 5, 17, 48, 64, 160, 1000):
        assert train.warm().steps_for(n) < train.steps_for(n), n


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(UserError, match="unknown preset 'nope'.*paper-sbem"):
        preset("nope")


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("data.n_pool", "none", None),
        ("data.n_pool", "None", None),
        ("data.n_pool", "12", 12),
        ("data.pixel_size", "null", None),
        ("data.pixel_size", "0.25", 0.25),
        ("train.augment", "false", False),
        ("train.augment", "true", True),
        ("train.augment", "0", False),
        ("train.lr", "1e-3", 1e-3),
        ("train.epochs", "10", 10),
        ("train.epochs", 7.0, 7),
        ("loop.strategies", "random,std_sum", ("random", "std_sum")),
        ("loop.strategies", " random , std_edt ", ("random", "std_edt")),
        ("loop.strategies", ["std_edt"], ("std_edt",)),
        ("scoring.edt", "foreground", "foreground"),
    ],
)
def test_with_overrides_converts_to_the_field_type(key: str, text: Any, expected: Any) -> None:
    value = get(with_overrides(Config(), {key: text}), key)
    assert value == expected
    assert type(value) is type(expected)


def test_with_overrides_does_not_modify_the_input() -> None:
    base = Config()
    changed = with_overrides(base, {"train.epochs": "3"})
    assert base.train.epochs == 3500
    assert changed.train.epochs == 3
    assert changed.model == base.model


@pytest.mark.parametrize("key", ["train.nope", "nope.epochs", "train", "epochs", ".epochs"])
def test_with_overrides_rejects_unknown_keys(key: str) -> None:
    with pytest.raises(UserError, match="unknown setting.*valid settings: data.source"):
        with_overrides(Config(), {key: "1"})


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("train.epochs", "ten"),
        ("train.epochs", "1.5"),
        ("train.epochs", 1.5),
        ("train.epochs", "none"),  # not optional
        ("train.lr", "fast"),
        ("train.augment", "maybe"),
        ("data.n_pool", "x"),
    ],
)
def test_with_overrides_rejects_bad_values(key: str, text: Any) -> None:
    with pytest.raises(UserError, match=f"setting {key}: .* is not a valid"):
        with_overrides(Config(), {key: text})


def test_parse_assignments_splits_at_the_first_equals_sign() -> None:
    parsed = parse_assignments(["train.epochs = 10", "data.source=/a=b"])
    assert parsed == {"train.epochs": "10", "data.source": "/a=b"}


@pytest.mark.parametrize("item", ["train.epochs", "=3", ""])
def test_parse_assignments_rejects_items_without_key_and_equals(item: str) -> None:
    with pytest.raises(UserError, match="--set expects key=value"):
        parse_assignments([item])


def test_all_keys_lists_every_field_once() -> None:
    keys = all_keys()
    assert len(keys) == len(set(keys))
    assert {"train.epochs", "loop.strategies", "scoring.edt", "data.n_pool"} <= set(keys)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_yaml_round_trip_is_exact(name: str, tmp_path: Path) -> None:
    config = with_overrides(preset(name), {"loop.strategies": "std_edt,random,std_sum"})
    path = tmp_path / "config.yaml"
    path.write_text(save_yaml(config))
    assert load_yaml(path) == config
    assert from_dict(to_dict(config)) == config


def test_to_dict_carries_the_schema_and_plain_lists() -> None:
    data = to_dict(Config())
    assert data["schema"] == SCHEMA_VERSION
    assert data["loop"]["strategies"] == ["random", "std_edt"]
    assert yaml.safe_load(save_yaml(Config())) == data


@pytest.mark.parametrize("schema", [None, SCHEMA_VERSION + 1, "1"])
def test_loading_another_schema_is_a_user_error(schema: Any, tmp_path: Path) -> None:
    data = to_dict(Config())
    data["schema"] = schema
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=f"{path}: config schema .* is not {SCHEMA_VERSION}"):
        load_yaml(path)


def test_loading_an_unknown_key_is_a_user_error(tmp_path: Path) -> None:
    data = to_dict(Config())
    data["train"]["warp_speed"] = 9
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="unknown setting 'train.warp_speed'"):
        load_yaml(path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "key: [unclosed\n"])
def test_loading_a_non_mapping_or_broken_yaml_is_a_user_error(text: str, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=str(path)):
        load_yaml(path)


def test_loading_a_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read config"):
        load_yaml(tmp_path / "missing.yaml")
