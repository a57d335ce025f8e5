import json

import pytest

from conftest import run_cli, run_cli_tty

KEYS = {"status", "epochs", "loss_train", "loss_test", "gradient_norm", "function_path_length",
        "gradient_path_length", "weights_product"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "m.pt"
    r = run_cli("train", "--data", "mnist5k", "--pair", "0", "1", "--n-train", "64", "--seed", "0",
                "--segments", "200", "--points", "20", "--json", "--save", path)
    assert r.returncode == 0, r.stderr
    return r, path


def test_train_json_is_one_line_with_the_required_keys(trained):
    r, _ = trained
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert KEYS <= set(rec)
    assert rec["status"] == "converged" and rec["epochs"] > 0
    assert rec["loss_train"] < 1e-4 and rec["loss_test"] > rec["loss_train"]
    for k in ("gradient_norm", "function_path_length", "gradient_path_length", "weights_product"):
        assert rec[k] > 0
    assert rec["function_path_length_train"] > 0 and "gradient_norm_squared" in rec
    assert r.stderr == ""  # no progress bar when not a terminal


def test_measure_recomputes_the_saved_models_measures(trained):
    r, path = trained
    first = json.loads(r.stdout)
    m = run_cli("measure", path, "--segments", "200", "--points", "20", "--json")
    assert m.returncode == 0, m.stderr
    again = json.loads(m.stdout)
    for k in KEYS - {"status", "epochs"}:
        assert again[k] == pytest.approx(first[k], rel=1e-5), k
    assert again["status"] == first["status"]


def test_measure_rejects_a_file_that_is_not_a_model(tmp_path):
    p = tmp_path / "x.pt"
    p.write_text("hello")
    r = run_cli("measure", p)
    assert r.returncode == 2 and "not a smoothness model file" in r.stderr
    r = run_cli("measure", tmp_path / "missing.pt")
    assert r.returncode == 2 and "no such file" in r.stderr


def test_many_models_print_one_line_each():
    r = run_cli("train", "--pair", "0", "1", "--n-train", "64", "128", "--seed", "0", "1", "--max-epochs", "2",
                "--segments", "10", "--points", "5", "--json")
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert [(x["n_train"], x["seed"]) for x in recs] == [(64, 0), (64, 1), (128, 0), (128, 1)]
    assert all(x["status"] == "not_converged" and x["epochs"] == 2 for x in recs)


def test_human_readable_output():
    r = run_cli("train", "--pair", "0", "1", "--n-train", "64", "--max-epochs", "2", "--segments", "10",
                "--points", "5")
    assert r.returncode == 0, r.stderr
    assert "not_converged after 2 epochs" in r.stdout and "gradient_path_length" in r.stdout


@pytest.mark.parametrize("cmd", [[], ["train"], ["measure"], ["download"], ["data"]])
def test_help(cmd):
    r = run_cli(*cmd, "--help")
    assert r.returncode == 0 and "usage: smoothness" in r.stdout


def test_data_command_describes_mnist5k():
    r = run_cli("data", "mnist5k")
    assert r.returncode == 0 and "train: 4000 images" in r.stdout and "test: 1000 images" in r.stdout


def test_bad_option_values_are_one_line_errors():
    r = run_cli("train", "--lr", "-1", "--json")
    assert r.returncode == 2 and r.stderr.strip() == "smoothness: error: invalid lr: -1.0 (must be a finite number > 0)"
    r = run_cli("train", "--device", "tpu")
    assert r.returncode == 2 and "unknown device" in r.stderr


def test_progress_bar_on_a_terminal():
    code, out, err = run_cli_tty("train", "--pair", "0", "1", "--n-train", "64", "--max-epochs", "40",
                                 "--segments", "5", "--points", "3")
    assert code == 0
    assert "training 1 model" in err and "/40 epochs" in err and "to cap" in err and "loss" in err
    assert "not_converged after 40 epochs" in out


def test_table_with_kendall_tau_for_several_sizes():
    r = run_cli("train", "--pair", "0", "1", "--n-train", "64", "128", "--segments", "20", "--points", "5")
    assert r.returncode == 0, r.stderr
    assert "Kendall tau(N, measure), seed 0, 2 converged models: GN" in r.stdout


def test_deeper_nets_and_other_optimizers_from_the_command_line():
    r = run_cli("train", "--n-train", "32", "64", "--hidden", "16", "16", "--alpha", "1", "--threshold", "1e-3",
                "--optimizer", "momentum", "--segments", "20", "--points", "5")
    assert r.returncode == 0, r.stderr
    assert "optimizer momentum" in r.stdout and " PN" in r.stdout and " WP" not in r.stdout
    assert "2 converged models: GN" in r.stdout and ("PN +" in r.stdout or "PN -" in r.stdout)
    r = run_cli("train", "--optimizer", "lbfgs")
    assert r.returncode == 2 and "invalid choice: 'lbfgs'" in r.stderr


def test_corrupt_data_file_is_one_line_error(tmp_path):
    from conftest import fake_source
    fake_source(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:300])
    r = run_cli("train", "--data", "mnist", "--data-dir", tmp_path, "--pair", "0", "1", "--n-train", "4")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "corrupt or truncated" in r.stderr


def test_regularized_training_from_the_command_line():
    r = run_cli("train", "--pair", "3", "8", "--n-train", "64", "--regularizer", "gradient_path_length",
                "--lam", "0", "1e-4", "--max-epochs", "3", "--segments", "10", "--points", "5", "--json")
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["regularizer"], x["lam"], x["lr"]) for x in recs] == [("gradient_path_length", 0.0, 0.1),
                                                                   ("gradient_path_length", 1e-4, 0.1)]
    r = run_cli("train", "--regularizer", "weights_product", "--hidden", "16", "16")
    assert r.returncode == 2 and "one hidden layer" in r.stderr
    r = run_cli("train", "--lam", "-1", "--regularizer", "gradient_norm")
    assert r.returncode == 2 and "invalid lam" in r.stderr


def test_bench_prints_loop_batched_and_grid_rows(tmp_path):
    g = tmp_path / "g.yaml"
    g.write_text("name: tiny\npairs: [[3, 8]]\nn_train: 16\nhidden: 8\nmax_epochs: 5\n"
                 "measure: {points: 20, segments: 5, points_per_segment: 3}\n")
    r = run_cli("bench", "--device", "cpu", "--models", "1,3", "--budget", "24", "--grid", g, "--measure", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("device cpu")
    rows = [ln.split() for ln in lines[2:5]]
    assert rows[0][:3] == ["one-model", "torch", "loop"] and [x[1] for x in rows[1:]] == ["1", "3"]
    assert all(float(x[-2]) > 0 for x in rows)
    assert "end to end, grid tiny: 1 model," in lines[5]
    assert lines[6].startswith("measuring 2 models") and " s batched; one at a time " in lines[6]
    r = run_cli("bench", "--models", "0,x")
    assert r.returncode == 2 and "--models" in r.stderr


def test_bench_of_the_cnn_family_prints_the_three_programs_for_each_m():
    r = run_cli("bench", "--family", "cnn", "--device", "cpu", "--models", "2", "--steps", "2",
                "--penalty", "gradient_norm")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("device cpu") and "GN" in lines[0]
    rows = [ln.rsplit(None, 3) for ln in lines[2:5]]
    assert [x[0] for x in rows] == ["loop of modules", "torch.func vmap recipe", "stacked (smoothness)"]
    assert all(x[1] == "2" and float(x[2]) > 0 for x in rows) and float(rows[0][3]) == 1.0
    r = run_cli("bench", "--family", "cnn", "--steps", "1")
    assert r.returncode == 2 and "--steps" in r.stderr
    r = run_cli("bench", "--family", "cnn", "--steps", "100000000")
    assert r.returncode == 2 and "expected 2 to 100,000 steps per model, got 100,000,000" in r.stderr


@pytest.mark.parametrize("args, words", [
    (["--family", "cnn", "--grid", "smoke", "--regularizers", "2"], "--grid, --regularizers do not apply to --family cnn"),
    (["--steps", "5"], "--steps does not apply to the MLP's bench"),
    (["--regularizers", "1", "--models", "3"], "--models does not apply to --regularizers"),
])
def test_a_bench_option_the_measurement_would_ignore_is_refused(args, words):
    r = run_cli("bench", "--device", "cpu", *args)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr


TINY = ["--hidden", "8", "--n-train", "16", "--max-epochs", "3", "--segments", "5", "--points", "5",
        "--measure-points", "20", "--device", "cpu"]
SEED_RULE = "expected an integer 0 <= seed < 2**32 (4294967296), got"


@pytest.mark.parametrize("args, words", [
    (["--seed", "99999999999999999999999"], f"--seed: {SEED_RULE} 99999999999999999999999"),
    (["--seed", "0", "4294967296"], f"--seed: {SEED_RULE} 4294967296"),   # would train seed 0's model
    (["--seed", "-1"], f"--seed: {SEED_RULE} -1"),                        # grids reject it too
    (["--measure-seed", "99999999999999999999999"], f"--measure-seed: {SEED_RULE} 99999999999999999999999"),
    (["--lr", "inf"], "invalid lr: inf (must be a finite number > 0)"),
    (["--alpha", "inf"], "invalid alpha: inf (must be a finite number > 0)"),
    (["--regularizer", "none", "--lam", "0.1"], "lam 0.1 needs a regularizer"),
])
def test_train_options_follow_the_grid_rules_before_any_training(args, words, capsys, monkeypatch):
    from smoothness.cli import commands
    from smoothness.experiments.running import pipeline

    def no_training(*a, **k):
        raise AssertionError("training started")
    monkeypatch.setattr(pipeline, "train_and_measure", no_training)
    assert commands.main(["train", *TINY, *args, "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"smoothness: error: {words}") and err.count("\n") == 1


def test_measure_seed_of_measure_is_checked_before_the_file_is_read(tmp_path, capsys):
    from smoothness.cli import commands
    assert commands.main(["measure", str(tmp_path / "missing.pt"), "--measure-seed", "4294967296"]) == 2
    assert capsys.readouterr().err == f"smoothness: error: --measure-seed: {SEED_RULE} 4294967296\n"


def test_seed_range_is_in_the_help():
    r = run_cli("train", "--help")
    assert r.returncode == 0 and " ".join(r.stdout.split()).count("0 <= seed < 2**32") == 2   # and --measure-seed
