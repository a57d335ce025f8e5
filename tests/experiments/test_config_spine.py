"""The configuration spine: each RunConfig field is declared once (config._field) and the `train` options, the grid
schema, the record, the report's setting columns and the limits are made from that declaration."""
import dataclasses
import typing

import pytest

from smoothness import paper
from smoothness.analysis import tables
from smoothness.cli import args
from smoothness.errors import ConfigError
from smoothness.experiments.configuration import config, grid
from smoothness.experiments.configuration.config import RunConfig

FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def test_every_option_of_train_is_a_field_with_its_declared_default_and_doc():
    parser = args.build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    options = {a.dest: a for a in train._actions}
    declared = [n for n, f in FIELDS.items() if f.metadata["option"]]
    assert {"n_train", "seed", "lam", "hidden", "alpha", "lr", "max_epochs", "segments"} <= set(declared)
    for name in declared:
        a, f = options[name], FIELDS[name]
        kind = f.metadata["option"]
        want = [f.default] if kind == "axis" else list(f.default) if kind == "list" else f.default
        assert a.default == want, name
        assert a.help.startswith(f.metadata["doc"]), name
        assert a.choices == f.metadata["choices"], name
    ns = parser.parse_args(["train"])
    fixed, axes = args.config_values(ns)
    assert set(axes) == {n for n in declared if FIELDS[n].metadata["option"] == "axis"}
    c = RunConfig(**fixed, **{k: v[0] for k, v in axes.items()})
    assert (c.alpha, c.batch_size, c.max_epochs, c.threshold, c.hidden) == (
        paper.ALPHA, paper.BATCH, paper.MAX_EPOCHS, paper.THRESHOLD, (paper.HIDDEN,))


def test_train_makes_one_model_per_combination_of_its_axes():
    ns = args.build_parser().parse_args(["train", "--n-train", "16", "32", "--seed", "0", "1", "2", "--lam", "0",
                                         "--hidden", "8", "4"])
    fixed, axes = args.config_values(ns)
    assert axes == {"n_train": [16, 32], "seed": [0, 1, 2], "lam": [0.0]} and fixed["hidden"] == (8, 4)


def test_the_grid_keys_are_the_declared_ones_and_a_field_without_one_is_refused_in_a_grid():
    top = config.grid_keys()
    assert top["pairs"] == "pair" and top["seeds"] == "seed" and "regularizer" not in top.values()
    assert config.grid_keys("measurement")["points_per_segment"] == "points"
    assert set(config.grid_keys("measurement").values()) == set(config.PARTS["measurement"])
    with pytest.raises(ConfigError, match="train_seed"):
        grid.parse({"name": "g", "train_seed": 3})


def test_the_report_setting_columns_and_the_limits_come_from_the_declarations():
    assert tables.SETTING == [n for n, f in FIELDS.items() if f.metadata["group"] == "setting"]
    assert "pair" not in tables.SETTING and "lam" not in tables.SETTING and "sharpness_iters" not in tables.SETTING
    assert {n for n, f in FIELDS.items() if f.metadata["limit"]} < set(config.LIMITS)
    with pytest.raises(ConfigError, match="n_train 2,000,000 is more than the limit of 1,000,000"):
        RunConfig(n_train=2_000_000)


def test_every_field_is_in_the_record_with_its_type():
    hints = typing.get_type_hints(config.Record)
    for name in FIELDS:
        assert name in hints, name


def test_the_numeric_axes_of_a_grid_are_the_declared_number_fields():
    assert set(grid._AXES) == {"n_train", "alpha", "lr", "batch_size", "max_epochs", "threshold"}
    g = grid.parse({"name": "g", "alpha": [0.5, 1], "lr": None, "max_epochs": 7})
    assert g.alpha == [0.5, 1.0] and g.lr == [None] and g.max_epochs == [7]
    with pytest.raises(ConfigError, match="batch_size"):
        grid.parse({"name": "g", "batch_size": 0})
