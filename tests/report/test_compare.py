"""`smoothness compare`: two stores of the same grid, matched model by model."""
import pandas as pd
import pytest

from conftest import run_cli
from smoothness.experiments.configuration import grid
from smoothness.experiments.running import runner
from smoothness.report import compare


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("cmp")
    for name, mode in (("fp32", "fp32"), ("tf32", "tf32-emulated")):
        g = grid.preset("smoke")
        g.matmul_precision = mode
        runner.run_grid(g, d / name, device="cpu", progress=False)
    return d


def test_a_store_against_itself_differs_nowhere(stores):
    c = compare.compare(stores / "fp32", stores / "fp32")
    assert len(c.matched) == c.models_a == 24
    assert c.statuses["models"].sum() == 24 and (c.statuses["status_a"] == c.statuses["status_b"]).all()
    assert set(c.differences["quantity"]) >= {"epochs", "gradient_norm", "function_path_length", "loss_test"}
    assert (c.differences[["median", "max"]] == 0).all().all()
    t = c.table1
    assert (t["tau_mean A"] == t["tau_mean B"]).all() and list(t["measure"]) == ["GN", "FPL", "GPL", "WP"]


def test_tf32_emulated_against_fp32_matches_every_model_with_small_differences(stores):
    c = compare.compare(stores / "fp32", stores / "tf32")
    assert len(c.matched) == 24 and c.ignored == ("matmul_precision",)
    d = c.differences.set_index("quantity")
    assert 0 < d.loc["gradient_norm", "median"] < 0.05      # TF32 rounding moves the trajectory, slightly
    assert (d["models"] <= 24).all()
    text = c.markdown()
    assert "matched 24 models on every configuration field except matmul_precision" in text
    assert "| gradient_norm | " in text and "setting: mnist5k" in text
    strict = compare.compare(stores / "fp32", stores / "tf32", ignore=())
    assert len(strict.matched) == 0 and "nothing to compare" in strict.markdown()


def test_compare_command(stores, tmp_path):
    r = run_cli("compare", stores / "fp32", stores / "tf32", "--csv", tmp_path / "m.csv")
    assert r.returncode == 0, r.stderr
    assert "status equal for" in r.stdout and "Table 1" in r.stdout
    assert len(pd.read_csv(tmp_path / "m.csv")) == 24
    r = run_cli("compare", stores / "fp32", stores / "tf32", "--ignore", "colour")
    assert r.returncode == 2 and "not configuration fields: colour" in r.stderr
    r = run_cli("compare", stores / "fp32", tmp_path / "nothing")
    assert r.returncode == 2 and "no results store" in r.stderr and "Traceback" not in r.stderr
