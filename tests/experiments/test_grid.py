"""Grid configs: YAML parsing, validation errors that name the key, expansion, presets."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import run_cli
from smoothness.cli import bench, commands
from smoothness.errors import ConfigError
from smoothness.experiments.configuration import grid
from smoothness.experiments.running import runner
from smoothness.training import regularizers


def parse(**kw):
    return grid.parse({"name": "t", **kw})


@pytest.mark.parametrize("raw, words", [
    ({"n_trian": [64]}, ["'n_trian'", "did you mean 'n_train'"]),
    ({"n_train": [64, "x"]}, ["'n_train'", "integer", "'x'"]),
    ({"n_train": [0]}, ["'n_train'", "positive"]),
    ({"lr": -0.1}, ["'lr'", "positive"]),
    ({"seeds": 1.5}, ["'seeds'", "integer"]),
    ({"pairs": [[3, 3]]}, ["'pairs'"]),
    ({"pairs": [[3, 11]]}, ["'pairs'"]),
    ({"pairs": "some"}, ["'pairs'", "all"]),
    ({"data": "cifar"}, ["'data'", "mnist5k"]),
    ({"hidden": [[256], []]}, ["'hidden'"]),
    ({"regularizers": [{"name": "tv"}]}, ["'regularizers'", "tv"]),
    ({"regularizers": [{"name": "gradient_norm", "lam": [-1]}]}, ["'lam'", "non-negative"]),
    ({"regularizers": [{"name": "gradient_norm", "lamda": [1]}]}, ["'lamda'", "did you mean 'lam'"]),
    ({"regularizers": [{"name": "weights_product", "lam": 1e-5}], "hidden": [256, 256]}, ["weights_product"]),
    ({"measure": {"measure_points": 0}}, ["'measure.measure_points'"]),
    ({"measure": {"points": 10, "measure_points": 10}}, ["'points'", "earlier spelling"]),
    ({"measure": {"segmnts": 10}}, ["'segmnts'"]),
    ({"threshold": "small"}, ["'threshold'", "number"]),
    # seeds: integers 0 <= seed < 2**32 (rng.check_seed), the rule of RunConfig and `train --seed`
    ({"seeds": [99999999999999999999999]}, ["'seeds'", "0 <= seed < 2**32"]),
    ({"seeds": 2**32}, ["'seeds'", "0 <= seed < 2**32"]),
    ({"seeds": [0, -1]}, ["'seeds'", "0 <= seed < 2**32", "-1"]),
    ({"regularizers": [{"name": "gradient_norm", "lam": 1e-4, "seeds": [2**32]}]}, ["'seeds'", "2**32"]),
    ({"measure": {"measure_seed": 99999999999999999999999}}, ["'measure.measure_seed'", "0 <= seed < 2**32"]),
    ({"measure": {"measure_seed": -1}}, ["'measure.measure_seed'", "0 <= seed < 2**32"]),
    # numbers are finite, as for `train --lr/--alpha`
    ({"lr": float("inf")}, ["'lr'", "finite"]),
    ({"alpha": [0.01, float("inf")]}, ["'alpha'", "finite"]),
    ({"threshold": float("nan")}, ["'threshold'", "finite"]),
    ({"regularizers": [{"name": "gradient_norm", "lam": float("inf")}]}, ["'lam'", "finite"]),
    # a name is a name: it becomes the folder runs/NAME
    ({"name": "../../x"}, ["'name'", "'../../x'", "not a valid grid name"]),
    ({"name": "/tmp/abs"}, ["'name'", "not a valid grid name"]),
    ({"name": "a/b"}, ["'name'", "not a valid grid name"]),
    ({"name": "a\\b"}, ["'name'", "not a valid grid name"]),
    ({"name": ".hidden"}, ["'name'", "not a valid grid name"]),
    ({"name": "x..y"}, ["'name'", "not a valid grid name"]),
    ({"name": "my grid"}, ["'name'", "not a valid grid name"]),
    ({"name": "x" * 101}, ["'name'", "not a valid grid name"]),
    # the points per segment belong to a path-length penalty; the fixed lambdas of Table 2 to a regularizer
    ({"regularizers": [{"name": "gradient_norm", "lam": 1e-4, "penalty_points": 100}]}, ["'penalty_points'",
                                                                                          "gradient_norm"]),
    ({"regularizers": [{"name": "function_path_length", "lam": 1e-4, "penalty_points": 1}]}, ["'penalty_points'",
                                                                                               ">= 2"]),
    ({"regularizers": [{"name": "function_path_length", "lam": 1e-4, "penalty_points": 2.5}]},
     ["'penalty_points'", "integer"]),
    ({"table2_lambdas": "papers"}, ["'table2_lambdas'", "'paper'"]),
    ({"table2_lambdas": {"gradient_nrm": 1e-3}}, ["'table2_lambdas'", "gradient_nrm"]),
    ({"table2_lambdas": {"gradient_norm": 0}}, ["'table2_lambdas.gradient_norm'", "positive"]),
    ({"independent_seeds": "yes"}, ["'independent_seeds'", "true or false"]),
])
def test_invalid_grids_name_the_key(raw, words):
    with pytest.raises(ConfigError) as e:
        parse(**raw)
    for w in words:
        assert w in str(e.value)


def test_axes_take_one_value_or_lists_and_yaml_style_floats():
    g = parse(pairs=[3, 8], n_train=64, seeds=[0, 1], threshold="1e-5", hidden=[[32], [16, 16]], alpha=[0.01, 1])
    assert g.pairs == [(3, 8)] and g.n_train == [64] and g.threshold == [1e-5]
    assert g.hidden == [(32,), (16, 16)]
    assert len(g.configs()) == 2 * 2 * 2
    assert parse(hidden=[16, 16]).hidden == [(16, 16)]
    assert len(parse(pairs="all").pairs) == 45


def test_lambda_zero_is_plain_sgd_and_shared_baselines_are_trained_once():
    g = parse(n_train=64, regularizers=[{"name": "gradient_norm", "lam": [0, 1e-4]},
                                        {"name": "weights_product", "lam": [0, 1e-5]},
                                        {"name": "function_path_length", "lam": [0, 1e-4]}])
    cs = g.configs()
    assert [(c.regularizer, c.lam, c.lr) for c in cs] == [
        ("none", 0.0, 0.01), ("gradient_norm", 1e-4, 0.01), ("weights_product", 1e-5, 0.01),
        ("none", 0.0, 0.1), ("function_path_length", 1e-4, 0.1)]
    assert len({grid.config_key(c) for c in cs}) == len(cs)


def test_regularizer_entries_override_lr_cap_and_sizes():
    g = parse(n_train=[16, 32], regularizers=["none", {"name": "gradient_norm", "lam": [1e-3], "lr": 0.05,
                                                        "max_epochs": 7, "n_train": 64}])
    reg = [c for c in g.configs() if c.regularizer != "none"]
    assert [(c.n_train, c.lr, c.max_epochs) for c in reg] == [(64, 0.05, 7)]
    assert g.sizes() == [16, 32, 64]


def test_regularizer_entries_override_alpha():
    g = parse(n_train=[16], alpha=1.0, regularizers=[{"name": "none", "lr": 0.2},
                                                     {"name": "none", "alpha": [0.01, 0.1], "lr": 0.2},
                                                     {"name": "weights_product", "lam": [0, 1e-3], "alpha": 0.01}])
    got = sorted((c.regularizer, c.alpha, c.lr) for c in g.configs())
    assert got == [("none", 0.01, 0.01), ("none", 0.01, 0.2), ("none", 0.1, 0.2), ("none", 1.0, 0.2),
                   ("weights_product", 0.01, 0.01)]
    with pytest.raises(ConfigError, match="alpha"):
        parse(regularizers=[{"name": "none", "alpha": -1}])


def test_config_key_is_stable_and_distinguishes_configs():
    a, b = parse(n_train=[64, 128]).configs()
    assert grid.config_key(a) == grid.config_key(parse(n_train=64).configs()[0])
    assert grid.config_key(a) != grid.config_key(b)


@pytest.mark.parametrize("name, models", [("paper-table1", 1080), ("paper-table2", 45 * 32)])
def test_paper_presets_are_the_papers_grids(name, models):
    g = grid.preset(name)
    assert g.data == "mnist" and len(g.pairs) == 45 and len(g.configs()) == models
    if name == "paper-table1":
        assert g.n_train == [64, 128, 256, 512, 1024, 2048, 4096, 8192] and g.seeds == [0, 1, 2]
    else:
        # the paper's method: per regularizer a ladder of factor sqrt(10) (7 values) that holds the paper's own
        # lambdas (WP's 3e-5 as one more rung), at the paper's learning rates and caps (15,000 epochs for GN, as in
        # the original code); Table 2 is also reported at the paper's lambdas
        assert g.table2_lambdas == regularizers.PAPER_LAMBDAS
        ladders = {}
        for c in g.configs():
            if c.regularizer != "none":
                ladders.setdefault(c.regularizer, set()).add((c.lam, c.lr, c.max_epochs))
        paper = {"gradient_norm": (0.01, 15000, [1e-5, 1e-4, 1e-3]), "weights_product": (0.01, 25000, [1e-5]),
                 "function_path_length": (0.1, 25000, [1e-4]), "gradient_path_length": (0.1, 25000, [1e-5])}
        assert set(ladders) == set(paper)
        for reg, (lr, cap, own) in paper.items():
            lams = sorted(lam for lam, r, m in ladders[reg] if (r, m) == (lr, cap))
            assert len(lams) == len(ladders[reg]) == 7 + (reg == "weights_product") and set(own) <= set(lams)
            if reg == "weights_product":
                assert 3e-5 in lams
                lams.remove(3e-5)
            assert all(b / a == pytest.approx(10 ** 0.5, rel=1e-5) for a, b in zip(lams, lams[1:]))
        baselines = {(c.lr, c.max_epochs) for c in g.configs() if c.regularizer == "none"}
        assert baselines == {(0.01, 15000), (0.01, 25000), (0.1, 25000)}
    for c in g.configs():
        assert (c.hidden, c.alpha, c.batch_size, c.threshold) == ((256,), 0.01, 64, 1e-5)


@pytest.mark.parametrize("table, models", [("table1", 1080), ("table2", 45 * 32)])
def test_fashion_presets_are_the_papers_designs_on_fashion_mnist(table, models):
    f, m = grid.preset(f"fashion-{table}"), grid.preset(f"paper-{table}")
    assert f.data == "fashion-mnist" and len(f.configs()) == models
    strip = ("name", "description", "data")
    assert {k: v for k, v in f.to_dict().items() if k not in strip} == \
        {k: v for k, v in m.to_dict().items() if k not in strip}
    if Path("/usr/share/datasets/fashion-mnist").is_dir():   # every training set of the grid exists
        runner.check_data(f)


def test_a_regularizer_entry_can_take_its_own_pairs():
    g = parse(pairs=[[3, 8], [4, 9], [2, 3]], regularizers=[
        {"name": "none"}, {"name": "gradient_norm", "lam": [0, 1e-3], "pairs": [[3, 8], [5, 6]], "n_train": 16}])
    reg = [c for c in g.configs() if c.regularizer != "none"]
    assert sorted(c.pair for c in reg) == [(3, 8), (5, 6)]
    assert g.all_pairs() == [(3, 8), (4, 9), (2, 3), (5, 6)]
    assert g.to_dict()["regularizers"][1]["pairs"] == [[3, 8], [5, 6]]
    with pytest.raises(ConfigError, match="key 'pairs'"):
        parse(regularizers=[{"name": "gradient_norm", "lam": [1e-3], "pairs": [[3, 3]]}])


def test_every_preset_is_valid_and_the_cli_lists_them():
    for name in grid.PRESETS:
        assert grid.preset(name).configs()
    r = run_cli("presets")
    assert r.returncode == 0 and all(n in r.stdout for n in grid.PRESETS)
    r = run_cli("presets", "smoke")
    assert r.returncode == 0 and "name: smoke" in r.stdout


def test_grid_file_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_train: [64\n")
    for arg, words in ((bad, "not valid YAML"), (tmp_path / "missing.yaml", "no such grid file"),
                       ("quik", "did you mean 'quick'")):
        r = run_cli("run", arg, "--out", tmp_path / "o")
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr
        assert r.stderr.count("\n") == 1
    typo = tmp_path / "typo.yaml"
    typo.write_text("pairs: [[3, 8]]\nseed: [0]\n")
    r = run_cli("run", typo)
    assert r.returncode == 2 and "unknown key 'seed'" in r.stderr and "did you mean 'seeds'" in r.stderr


@pytest.mark.parametrize("model, words", [
    ({"family": "cnn", "channels": [8], "kernel": 29}, "kernel 29 is wider than the inputs (28x28)"),
    ({"family": "cnn", "channels": [4096, 4096]}, "parameters per model, more than the limit"),
    ({"family": "cnn", "channels": [2] * 6}, "6 pooling blocks do not fit inputs of shape [1, 28, 28]"),
])
def test_a_cnn_that_does_not_fit_the_images_is_refused_with_the_grid_files_name(tmp_path, model, words):
    f = tmp_path / "cnn.yaml"
    f.write_text(yaml.safe_dump({"pairs": [[3, 8]], "n_train": [16], "model": model}))
    with pytest.raises(ConfigError) as e:
        grid.load(f)
    assert str(e.value).startswith(f"{f}: model: cnn family: ") and words in str(e.value), str(e.value)


def test_a_folder_named_like_a_preset_does_not_hide_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke").mkdir()            # e.g. an output folder of an earlier run
    (tmp_path / "mine").mkdir()
    assert grid.resolve("smoke").name == "smoke"
    with pytest.raises(ConfigError, match="mine is a folder, not a grid YAML file or a preset name"):
        grid.resolve("mine")


def test_seeds_names_and_numbers_at_the_edges_of_the_rules():
    g = parse(seeds=[0, 2**32 - 1], measure={"seed": 2**32 - 1}, name="paper-table1_v2.0+x")
    assert g.all_seeds() == [0, 2**32 - 1] and g.name == "paper-table1_v2.0+x"
    assert {c.measure_seed for c in g.configs()} == {2**32 - 1}


def test_grid_files_not_utf8_or_with_a_key_twice_are_one_line_errors(tmp_path):
    cases = {"latin1.yaml": ("name: x\ndescription: M\u00fcller\n".encode("latin-1"), "not a UTF-8 text file"),
             "binary.yaml": (bytes(range(256)) * 4, "not a UTF-8 text file"),
             "twice.yaml": (b"name: x\nseeds: [0]\nn_train: 16\nseeds: [1]\n", "duplicate key 'seeds' (lines 2 and 4)"),
             "nested.yaml": (b"regularizers:\n  - {name: gradient_norm, lam: 1.0e-4, lam: 0}\n",
                             "duplicate key 'lam' (line 2)"),
             "measure.yaml": (b"measure:\n  seed: 1\n  seed: 2\n", "duplicate key 'seed'")}
    for name, (blob, words) in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ConfigError) as e:
            grid.load(tmp_path / name)
        assert str(e.value).startswith(f"{tmp_path / name}: ") and words in str(e.value), str(e.value)
    (tmp_path / "bom.yaml").write_bytes(b"\xef\xbb\xbfname: b\ndescription: M\xc3\xbcller\n")  # UTF-8, with a BOM
    assert grid.load(tmp_path / "bom.yaml").description == "M\u00fcller"
    (tmp_path / "anchors.yaml").write_bytes(b"name: a\nmeasure: &m {seed: 3}\n")   # YAML anchors still load
    assert grid.load(tmp_path / "anchors.yaml").measure["measure_seed"] == 3
    (tmp_path / ".hidden.yaml").write_bytes(b"n_train: 16\n")   # the name comes from the file: the same rule
    with pytest.raises(ConfigError, match="taken from the file name"):
        grid.load(tmp_path / ".hidden.yaml")
    r = run_cli("run", tmp_path / "latin1.yaml", "--dry-run")
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert r.stderr.startswith(f"smoothness: error: {tmp_path / 'latin1.yaml'}: not a UTF-8 text file")


def test_a_grid_name_cannot_leave_the_runs_folder(tmp_path):
    f = tmp_path / "escape.yaml"
    f.write_text("name: ../../escaped\npairs: [[3, 8]]\nn_train: 16\nhidden: 8\nmax_epochs: 1\n")
    work = tmp_path / "a" / "b"   # without --out the store would go to runs/../../escaped = tmp_path/a/escaped
    work.mkdir(parents=True)
    r = subprocess.run([sys.executable, "-m", "smoothness", "run", str(f), "--device", "cpu"], cwd=work,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "key 'name'" in r.stderr
    assert not (tmp_path / "a" / "escaped").exists() and not (work / "runs").exists()


def test_dry_run_counts_models(tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text("name: g\npairs: [[3, 8], [4, 9]]\nn_train: [32, 64]\nseeds: [0, 1, 2]\n")
    r = run_cli("run", f, "--dry-run", "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert "12 models" in r.stdout and "0 stored" in r.stdout and "12 to train" in r.stdout
    work = r.stdout.splitlines()[1]   # 12 models of 784-256-1, each to the cap of 25,000 epochs of one step (N <= 64)
    assert work.startswith("work left, every model to its epoch cap: at most 300,000 plain SGD steps (12 models")
    assert "plain steps/s of one 784-256-1, batch 64 model measured now, at most" in work


def test_busy_note_warns_only_when_no_core_was_free():
    assert bench.busy_note(0.3, 2) == "" and bench.busy_note(1.4, 2) == ""
    line = bench.busy_note(3.2, 2)
    assert "busy" in line and "load 3.2 on 2 cores" in line and "time shorter" in line
    assert "on 1 core)" in bench.busy_note(1.0, 1)


def test_dry_run_says_when_the_rate_was_timed_on_a_busy_machine(tmp_path, monkeypatch, capsys):
    f = tmp_path / "g.yaml"
    f.write_text("name: g\npairs: [[3, 8]]\nn_train: [32]\nseeds: [0]\nhidden: 8\n")
    cores = bench.machine_load()[1]
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 2.0, 1.0, 1.0))
    assert commands.main(["run", str(f), "--dry-run", "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[2].startswith(f"the machine was busy when the rate was timed (load {cores + 2.0:.1f}")
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert commands.main(["run", str(f), "--dry-run", "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_dry_run_lines_put_one_model_and_one_pair_in_the_singular(tmp_path):
    g = grid.parse({"name": "g1", "pairs": [[3, 8]], "n_train": [32], "seeds": [0]})
    line = runner.dry_run(g, tmp_path / "o")
    assert line.startswith("grid g1: 1 model (1 pair, sizes [32]"), line
    assert "(1 model; a step" in runner.work_note(runner.work_left(g, tmp_path / "o"))
    two = grid.parse({"name": "g2", "pairs": [[3, 8], [4, 9]], "n_train": [32], "seeds": [0]})
    assert runner.dry_run(two, tmp_path / "o").startswith("grid g2: 2 models (2 pairs,")


def test_paper_preset_without_full_mnist_fails_before_training(tmp_path):
    env = {"HOME": str(tmp_path), "SMOOTHNESS_DATA": str(tmp_path / "none"), "XDG_CACHE_HOME": str(tmp_path)}
    r = run_cli("reproduce", "--preset", "paper-table1", "--out", tmp_path / "o", "--data-dir", tmp_path, env=env)
    assert r.returncode == 2 and r.stderr.startswith("smoothness: error:") and "Traceback" not in r.stderr
    assert "mnist" in r.stderr.lower() and "download" in r.stderr.lower()
    assert r.stdout == ""                                      # nothing trained, no summary


def test_optimizer_axis_expands_with_gd_batch_and_adam_rate_and_keeps_sgd_keys():
    base = {"pairs": [[3, 8]], "n_train": [64, 128], "seeds": [0]}
    g = grid.parse({**base, "optimizer": ["sgd", "gd", "momentum", "adam"], "batch_size": [32, 64]})
    cs = g.configs()
    by = {}
    for c in cs:
        by.setdefault(c.optimizer, []).append(c)
    assert len(by["sgd"]) == len(by["momentum"]) == len(by["adam"]) == 4
    assert sorted((c.n_train, c.batch_size) for c in by["gd"]) == [(64, 64), (128, 128)]  # batch axis collapses
    assert {c.lr for c in by["adam"]} == {1e-3} and {c.lr for c in by["sgd"]} == {0.01}
    plain = grid.parse({**base, "batch_size": [32, 64]}).configs()
    assert {grid.config_key(c) for c in plain} == {grid.config_key(c) for c in by["sgd"]}
    assert len({c.batch_key() for c in cs}) == 2 + 2 + 2 + 2   # (optimizer, batch size) programs
    with pytest.raises(ConfigError, match="key 'optimizer': unknown optimizer 'rmsprop'"):
        grid.parse({**base, "optimizer": "rmsprop"})


def test_sam_radius_is_an_axis_that_only_sam_reads():
    base = {"pairs": [[3, 8]], "n_train": [64], "seeds": [0]}
    cs = grid.parse({**base, "optimizer": ["sgd", "sam"], "rho": [0.01, 0.05]}).configs()
    assert sorted((c.optimizer, c.rho) for c in cs) == [("sam", 0.01), ("sam", 0.05), ("sgd", 0.0)]
    sgd = grid.parse(base).configs()[0]
    assert grid.config_key(sgd) == grid.config_key([c for c in cs if c.optimizer == "sgd"][0])   # old keys stay
    assert grid.parse({**base, "optimizer": "sam"}).configs()[0].rho == 0.05   # SAM's default radius
    with pytest.raises(ConfigError, match="'rho'"):
        grid.parse({**base, "optimizer": "sam", "rho": 0})
    from smoothness.experiments.running import pipeline
    with pytest.raises(ConfigError, match="rho 0.1 is SAM's radius: it needs optimizer sam"):
        pipeline.RunConfig(pair=(3, 8), n_train=64, rho=0.1)


def test_full_batch_gd_takes_one_step_per_epoch():
    from smoothness.experiments.running import pipeline
    c = pipeline.RunConfig(pair=(3, 8), n_train=100, optimizer="gd", lr=0.05, max_epochs=30, threshold=1e-9,
                           measure_points=20, segments=5, points=10)
    (r,) = pipeline.train_and_measure([c])
    assert c.batch_size == 100 and r["epochs"] == r["steps"] == 30 and r["optimizer"] == "gd"


def test_fields_added_after_the_first_release_are_one_table_that_keeps_old_keys():
    from dataclasses import fields as dc_fields
    from dataclasses import replace

    from smoothness.experiments.configuration.config import ADDED_FIELDS, RunConfig, config_key
    c = RunConfig()
    defaults = {f.name: getattr(c, f.name) for f in dc_fields(RunConfig)}   # as resolved (rho None -> 0 for sgd)
    assert all(defaults[k] == v for k, v in ADDED_FIELDS.items())
    for k in ADDED_FIELDS:   # at its default the field is not in the key; set, it is
        other = {"sharpness_iters": 5, "trace_probes": 3, "optimizer": "adam", "matmul_precision": "tf32-emulated",
                 "rho": 0.1, "penalty_points": 100, "train_seed": 7, "model": "cnn", "loss": "cross_entropy",
                 "classes": (0, 1, 2, 3)}[k]
        changed = ({k: other, "optimizer": "sam"} if k == "rho" else
                   {k: other, "regularizer": "function_path_length", "lam": 1e-4} if k == "penalty_points" else
                   {k: other, "classes": (0, 1, 2, 3)} if k == "loss" else
                   {k: other})
        assert config_key(replace(c, **changed)) != config_key(replace(c, **{**changed, k: defaults[k]})), k
    assert grid.config_key is config_key


def test_independent_seeds_and_penalty_points_in_a_grid():
    raw = {"name": "t", "pairs": [[3, 8], [4, 9]], "seeds": [0, 1], "independent_seeds": True,
           "table2_lambdas": "paper",
           "regularizers": [{"name": "gradient_norm", "lam": [0, 1e-3, 1e-2]},
                            {"name": "function_path_length", "lam": [0, 1e-4], "penalty_points": 100}]}
    g = grid.parse(raw)
    cs = g.configs()
    base = [c for c in cs if c.regularizer == "none"]
    reg = [c for c in cs if c.regularizer != "none"]
    assert base and all(c.train_seed is None and c.init_seed == c.seed for c in base)
    # a training seed per (seed, regularizer, lambda), the same on every parse; the training set still by `seed`
    runs = {(c.seed, c.regularizer, c.lam) for c in reg}
    assert len({c.train_seed for c in reg}) == len(runs) == 6 and all(c.init_seed != c.seed for c in reg)
    assert [c.train_seed for c in reg] == [c.train_seed for c in grid.parse(raw).configs() if c.regularizer != "none"]
    assert {c.penalty_points for c in reg if c.regularizer == "function_path_length"} == {100}
    assert {c.penalty_points for c in cs if c.regularizer != "function_path_length"} == {10}
    assert g.table2_lambdas == {"gradient_norm": 1e-3, "weights_product": 3e-5, "function_path_length": 1e-4,
                                "gradient_path_length": 1e-5}
    # the grid as stored in a results store parses back to the same models (unset entry keys are written as None)
    again = grid.parse(g.to_dict())
    assert [grid.config_key(c) for c in again.configs()] == [grid.config_key(c) for c in cs]
    # staging pools a rung's models whatever their training seeds
    from smoothness.experiments.configuration import staging
    assert len({staging.group_of(c) for c in reg if c.regularizer == "gradient_norm"}) == 1


def test_the_training_seed_draws_the_initial_weights_and_the_seed_the_training_set():
    from dataclasses import replace

    from smoothness.experiments.running import pipeline
    c = pipeline.RunConfig(n_train=16, hidden=(8,), max_epochs=2, threshold=1e-9, measure_points=20, segments=4,
                           points=4)
    same, other = replace(c, train_seed=c.seed), replace(c, train_seed=12345)
    a, b, d = pipeline.train_and_measure([c, same, other])
    assert grid.config_key(c) != grid.config_key(same)
    for x, y in zip(a["params"].tensors(), b["params"].tensors()):
        assert torch.equal(x, y)
    assert not torch.equal(a["params"].weights[0], d["params"].weights[0])
    assert a["fpl_lower_bound"] == d["fpl_lower_bound"] and d["train_seed"] == 12345


def test_the_measure_keys_are_the_fields_names_and_the_earlier_spelling_is_still_read():
    new = parse(measure={"measure_points": 50, "points_per_segment": 7, "measure_seed": 3})
    old = parse(measure={"points": 50, "points_per_segment": 7, "seed": 3})   # a grid of an earlier version
    assert [grid.config_key(c) for c in new.configs()] == [grid.config_key(c) for c in old.configs()]
    c = new.configs()[0]
    assert (c.measure_points, c.points, c.measure_seed) == (50, 7, 3)
    assert set(new.to_dict()["measure"]) >= {"measure_points", "points_per_segment", "measure_seed"}


def test_dry_run_times_a_cnn_grids_penalties_instead_of_using_the_mlps_table(tmp_path, monkeypatch, capsys):
    spec = {"name": "c", "pairs": [[3, 8]], "n_train": [64], "seeds": [0], "max_epochs": 10,
            "model": {"family": "cnn", "channels": [2, 2], "kernel": 3, "pool": "max"},
            "regularizers": [{"name": "none"}, {"name": "gradient_norm", "lam": [1e-3]}]}
    g = grid.parse(spec)
    table = {grid.config_key(c): w for c, w in runner.work_left(g, tmp_path / "o")}
    fam = g.configs()[0].family()
    costs = bench.step_costs(g.configs(), fam, 64, torch.device("cpu"), plain_rate=100.0, steps=12)
    assert list(costs) == [("gradient_norm", g.configs()[1].penalty_points)] and costs[list(costs)[0]] > 0
    timed = {grid.config_key(c): (c, w) for c, w in runner.retimed(runner.work_left(g, tmp_path / "o"), costs)}
    for k, (c, w) in timed.items():   # the plain model as before, the penalized one at the timed cost
        assert w == pytest.approx(table[k] if c.regularizer == "none" else 10 * costs[list(costs)[0]]), c
    assert "a step with a penalty timed now for this family" in runner.work_note(list(timed.values()), timed=True)
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(spec))
    seen = []
    real = bench.step_costs
    monkeypatch.setattr(bench, "step_costs", lambda *a, **k: seen.append(1) or real(*a, **{**k, "steps": 12}))
    assert commands.main(["run", str(f), "--dry-run", "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    assert seen and "timed now for this family" in capsys.readouterr().out


def test_a_classification_grid_is_the_same_grid_as_its_stored_definition():
    """A grid of classes is stored with a stand-in pair beside its classes: read back it must be the same grid, or a
    second `run` of the same file would be refused as another grid's store. Empty or false classes are refused,
    except the empty list, which is how a stored grid of pairs writes "no classes"."""
    import json

    from smoothness.experiments.configuration import griddiff
    for classes in ("all", [0, 1, 2]):
        g = grid.parse({"classes": classes, "n_train": [30], "loss": "cross_entropy"}, name="c")
        stored = json.loads(json.dumps(g.to_dict()))
        assert griddiff.differences(stored, g) == []
        assert griddiff.differences(stored, grid.parse({"classes": [0, 1], "n_train": [30]}, name="c")) \
            == ["classes", "loss"]
    assert grid.parse({"classes": [], "n_train": [20]}, name="p").classes == ()
    for bad in (False, 0, "", "none"):
        with pytest.raises(ConfigError, match="key 'classes'|key classes"):
            grid.parse({"classes": bad, "n_train": [20]}, name="c")


def test_a_dry_run_refuses_an_out_the_run_could_not_create_and_creates_nothing(tmp_path):
    from smoothness.errors import StoreError
    g = grid.parse({"n_train": [16]}, name="t")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreError, match="cannot create the directory"):
        runner.dry_run(g, f / "sub")
    with pytest.raises(StoreError, match="is a file, not a directory"):
        runner.dry_run(g, f / "results.sqlite")
    assert "0 stored" in runner.dry_run(g, tmp_path / "new" / "deeper")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_regularizer_entry_without_a_positive_lambda_is_refused():
    for entry in ("gradient_norm", {"name": "gradient_norm"}, {"name": "weights_product", "lam": [0]}):
        with pytest.raises(ConfigError, match="has no lam > 0"):
            grid.parse({"n_train": [16], "regularizers": [entry]}, name="t")
    assert grid.parse({"n_train": [16], "regularizers": ["none"]}, name="t").configs()


def test_a_classification_size_that_does_not_split_by_class_is_refused_with_the_grid(tmp_path):
    """Every size is checked when the grid is read, not only the largest: a run must not stop partway at N = 25 of
    ten classes, and the line names the grid and the size."""
    with pytest.raises(ConfigError, match=r"grid 'c': n_train 25: .* must be a multiple of 10"):
        grid.parse({"data": "mnist5k", "classes": "all", "n_train": [20, 25, 40]}, name="c")
    with pytest.raises(ConfigError, match="n_train 9: .* multiple of 2"):
        grid.parse({"data": "mnist5k", "classes": [3, 8], "n_train": [9]}, name="c")
    runner.check_data(grid.parse({"data": "mnist5k", "classes": "all", "n_train": [20, 30, 40]}, name="c"))


def test_an_odd_size_of_a_digit_pair_is_refused_with_the_grid_and_a_line_task_takes_any_size():
    """A pair trains on N/2 images of each digit: an odd N is refused when the grid is read (before, only the data
    check refused it, without naming the grid)."""
    for n in (15, 1):
        with pytest.raises(ConfigError, match=rf"grid 'p': n_train {n}: .* even number >= 2"):
            grid.parse({"data": "mnist5k", "n_train": [16, n]}, name="p")
    assert len(grid.parse({"data": "line-sine", "n_train": [15, 16]}, name="l").configs()) == 2


def test_a_classification_task_is_named_by_its_classes_not_its_stand_in_pair(tmp_path):
    import io

    from smoothness.experiments.running.progress import GridProgress
    stream = io.StringIO()
    bar = GridProgress(2, True, stream, every=0.0)
    rec = {"data": "mnist5k", "pair": [3, 8], "classes": [0, 1, 2], "n_train": 30, "seed": 0,
           "regularizer": "none", "lam": 0.0, "status": "converged", "epochs": 12}
    bar.model_done(rec)
    bar.model_done({**rec, "classes": []})
    first, second = stream.getvalue().splitlines()
    assert "mnist5k classes 0,1,2 N=30" in first and "3/8" not in first
    assert "mnist5k 3/8 N=30" in second
    line = runner.dry_run(grid.parse({"data": "mnist5k", "classes": [0, 1, 2], "n_train": [30]}, name="c"),
                          tmp_path / "c")
    assert "(classes 0, 1, 2, sizes [30]" in line and "pair" not in line


def test_the_hidden_axis_crosses_the_mlp_entries_of_the_model_axis_only():
    g = grid.parse({"name": "mixed", "hidden": [[64], [256]], "model": ["mlp", "cnn"], "n_train": 64})
    cs = g.configs()
    assert sorted((c.model["family"] if c.model else "mlp", c.hidden) for c in cs) == [
        ("cnn", (256,)), ("mlp", (64,)), ("mlp", (256,))]
    only_mlp = grid.parse({"name": "m", "hidden": [[64], [256]], "n_train": 64}).configs()
    assert [grid.config_key(c) for c in cs if c.model is None] == [grid.config_key(c) for c in only_mlp]
    only_cnn = grid.parse({"name": "c", "model": "cnn", "n_train": 64}).configs()
    assert [grid.config_key(c) for c in cs if c.model is not None] == [grid.config_key(c) for c in only_cnn]
    with pytest.raises(ConfigError, match="no mlp entry"):
        grid.parse({"name": "c", "model": "cnn", "hidden": 64, "n_train": 64})


@pytest.mark.parametrize("name", ["weights_product", "path_norm"])
def test_the_mlp_weight_penalties_of_one_output_are_refused_for_a_classification_task(name):
    from smoothness.measures import inputspace
    from smoothness.models import MLPStack
    with pytest.raises(ConfigError, match=f"the {name} regularizer is defined for one output; a task of 3 classes"):
        grid.parse({"name": "c", "classes": [0, 1, 2], "n_train": 30,
                    "regularizers": [{"name": name, "lam": 1.0e-3}]})
    p = MLPStack([torch.randn(2, 4, 5), torch.randn(2, 3, 4)], [torch.zeros(2, 4), torch.zeros(2, 3)])
    fn = inputspace.weights_products if name == "weights_product" else inputspace.path_norms
    with pytest.raises(ValueError, match="defined for networks of one output; this one has 3"):
        fn(p)


@pytest.mark.parametrize("classes", [[0.7, 1.2], [True, 2], "01", [0, 1.0]])
def test_classes_that_are_not_integers_are_refused_not_rounded(classes):
    with pytest.raises(ConfigError, match="classes: expected 'all' or a list of classes 0..9"):
        grid.parse({"name": "c", "classes": classes, "n_train": 30})


def test_the_dry_runs_rate_times_fewer_steps_where_they_would_take_longer_than_its_budget(monkeypatch):
    from smoothness import training
    epochs = []
    real = training.BatchedTrainer.train
    monkeypatch.setattr(training.BatchedTrainer, "train",
                        lambda self, specs, **k: epochs.append(specs[0].max_epochs) or real(self, specs, **k))
    fam = grid.parse({"name": "c", "model": {"family": "cnn", "channels": [2]}, "n_train": 16}).configs()[0].family()
    assert bench.step_rate(fam, 8, torch.device("cpu"), steps=240) > 0 and epochs == [1, 20]
    epochs.clear()
    assert bench.step_rate(fam, 8, torch.device("cpu"), steps=240, budget=1e-9) > 0 and epochs == [1, 1]   # 2 steps
    epochs.clear()
    assert bench.step_rate(fam, 8, torch.device("cpu"), steps=240, budget=1e9) > 0 and epochs == [1, 1, 1, 20]


def test_progress_lines_name_the_settings_that_vary_within_the_run_and_the_frame_gives_a_cnn_no_hidden(tmp_path):
    import io

    from smoothness.experiments.running.progress import GridProgress, varying
    from smoothness.experiments.storage import records
    g = grid.parse({"name": "v", "hidden": [[16], [8, 8]], "model": ["mlp", {"family": "cnn", "channels": [2]}],
                    "n_train": 16, "regularizers": [{"name": "none"}, {"name": "gradient_norm", "lam": 1e-3,
                                                                        "lr": 0.05}]})
    cs = g.configs()
    assert varying(cs) == ("model", "hidden", "lr") and varying(cs[:1]) == ()
    stream = io.StringIO()
    bar = GridProgress(len(cs), True, stream, every=0.0, fields=varying(cs))
    recs = [{**{f: getattr(c, f) for f in ("data", "classes", "n_train", "seed", "regularizer", "lam", "model", "lr")},
             "hidden": list(c.hidden), "pair": list(c.pair), "status": "converged", "epochs": 3} for c in cs]
    for r in recs:
        bar.model_done(r)
    lines = stream.getvalue().splitlines()
    assert sum("mnist5k 3/8 mlp hidden=16 lr=0.01 N=16" in x for x in lines) == 1
    assert sum("mnist5k 3/8 mlp hidden=8-8 lr=0.05 N=16" in x and "gradient_norm" in x for x in lines) == 1
    assert sum("mnist5k 3/8 cnn 2 3 max lr=0.01 N=16" in x for x in lines) == 1   # no hidden for a CNN
    df = records.frame(recs)
    assert sorted(df["hidden"]) == ["", "", "16", "16", "8-8", "8-8"]


def test_a_cnn_setting_at_the_top_of_a_grid_says_where_it_belongs():
    with pytest.raises(ConfigError, match=r"a setting of the cnn family: write model: \{family: cnn, channels: \.\.\.\}"):
        grid.parse({"name": "c", "channels": [8], "n_train": 16})
    with pytest.raises(ConfigError, match="did you mean 'hidden'"):
        grid.parse({"name": "c", "hiden": [8], "n_train": 16})
