"""SGD against SAM on the same training sets: the optimizers table of the report, from a real run."""
import pytest

from conftest import grid_run, stored_frame
from smoothness.analysis import flatness
from smoothness.report import document

GRID = {"name": "sam-test", "pairs": [[3, 8]], "n_train": 64, "seeds": [0, 1], "hidden": 32, "lr": 0.05,
        "max_epochs": 3000, "threshold": 1.0e-3, "optimizer": ["sgd", "sam"], "rho": [0.002],
        "measure": {"points": 200, "segments": 50, "points_per_segment": 20, "sharpness_iters": 20,
                    "trace_probes": 4}}


@pytest.fixture(scope="module")
def sam_run(tmp_path_factory):
    return grid_run(tmp_path_factory, GRID)


def test_optimizers_are_compared_on_the_same_datasets(sam_run):
    df = stored_frame(sam_run)
    assert (df["status"] == "converged").all() and sorted(df["optimizer"]) == ["sam", "sam", "sgd", "sgd"]
    t = flatness.by_optimizer(df)
    assert list(t["optimizer"]) == ["sam", "sgd"] and list(t["paired"]) == [2, 2]
    sam, sgd = (df[df["optimizer"] == o].set_index("seed").sort_index() for o in ("sam", "sgd"))
    row = t[t["optimizer"] == "sam"].iloc[0]
    for c in ("sharpness", "gradient_norm", "lipschitz_upper", "loss_test"):
        assert row[f"{c}_mean"] == pytest.approx(sam[c].mean())
        assert row[f"{c}_ratio"] == pytest.approx((sam[c] / sgd[c]).mean())
    assert t[t["optimizer"] == "sgd"].iloc[0]["sharpness_ratio"] == pytest.approx(1.0)
    assert flatness.by_optimizer(df[df["optimizer"] == "sgd"]).empty    # one optimizer: nothing to compare


def test_report_has_the_optimizers_table(sam_run):
    written = document.write_report(sam_run)
    assert {"optimizers.md", "optimizers.csv"} <= set(written)
    md = (sam_run / "report" / "optimizers.md").read_text()
    assert "sam ρ=0.002" in md and "paired with SGD" in md and "(×" in md and "LipUB" in md
    assert "## Optimizers: flatness and smoothness" in (sam_run / "report" / "report.md").read_text()
