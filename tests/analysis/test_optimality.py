"""The optimality experiment in one dimension: ratios from real runs, the report's table and figure."""
import math

import pytest

from conftest import grid_run, stored_frame
from smoothness.analysis import optimality
from smoothness.data import lines
from smoothness.measures import oned
from smoothness.report import document

GRID = {"name": "oned-test", "data": "line-gp:pool=64,heldout=300", "n_train": [4, 8], "seeds": [0, 1],
        "alpha": 1.0, "lr": 0.2, "max_epochs": 20000, "threshold": 1.0e-4,
        "regularizers": [{"name": "none"}, {"name": "weights_product", "lam": [1.0e-3], "n_train": 8, "seeds": 0}],
        "measure": {"points": 300, "segments": 100, "points_per_segment": 20}}


@pytest.fixture(scope="module")
def oned_run(tmp_path_factory):
    return grid_run(tmp_path_factory, GRID)


def test_ratios_are_the_exact_measures_over_the_smallest(oned_run):
    df = stored_frame(oned_run)
    assert (df["status"] == "converged").all(), df[["n_train", "seed", "status", "loss_train"]]
    d = optimality.ratio_frame(df)
    assert len(d) == len(df) == 5
    for m in optimality.MEASURES:
        assert (d["ratio_" + m] == d["exact_" + m] / d["min_through_" + m]).all()
        assert (d["ratio_targets_" + m] == d["exact_" + m] / d["min_" + m]).all()
        # no function through the net's own values is smoother than S_min (GPL's S_min: an LP, within 1e-6)
        assert (d["ratio_" + m] >= 1 - 1e-6).all(), (m, d["ratio_" + m].tolist())
        # the targets are met up to the loss threshold, so their S_min is close for the first-order measures
        if m in ("gradient_norm", "function_path_length"):
            assert (abs(d["min_" + m] / d["min_through_" + m] - 1) < 0.05).all(), m
    t = optimality.ratio_table(df)
    sgd = t[(t["regularizer"] == "none")]
    assert sorted(sgd["n_train"]) == [4, 8] and (sgd["models"] == 2).all() and (sgd["converged"] == 2).all()
    row = sgd[sgd["n_train"] == 8].iloc[0]
    want = d[(d["regularizer"] == "none") & (d["n_train"] == 8)]["ratio_gradient_norm"]
    assert math.isclose(row["gradient_norm_mean"], want.mean()) and math.isclose(row["gradient_norm_max"], want.max())
    assert len(t[t["regularizer"] == "weights_product"]) == 1


def test_report_has_the_ratio_table_and_the_interpolant_figure(oned_run):
    written = document.write_report(oned_run)
    assert {"optimality.md", "optimality.csv", "interpolants.png"} <= set(written)
    md = (oned_run / "report" / "report.md").read_text()
    assert "## Optimality in one dimension" in md and "Optimality ratio S(f_SGD) / S_min on line-gp" in md
    assert "interpolants.png" in md and "WP λ=0.001" in md
    assert "for GPL the linear spline, exact" in md     # uniform density: GPL's S_min has no bracket
    assert "at the ladder's edge" in md and (oned_run / "report" / "optimality_edges.csv").exists()
    assert (oned_run / "report" / "interpolants.png").stat().st_size > 10_000


def test_edge_table_compares_the_ratios_at_the_largest_passing_lambda(oned_run):
    df = stored_frame(oned_run)
    e = optimality.edge_table(df)
    assert len(e) == 1
    r = e.iloc[0]
    assert r["regularizer"] == "weights_product" and r["n_train"] == 8 and r["lam"] == 1e-3 and r["ladder_short"]
    d = optimality.ratio_frame(df)
    base = d[(d["regularizer"] == "none") & (d["n_train"] == 8) & (d["seed"] == 0)]
    at = d[(d["regularizer"] == "weights_product")]
    for m in optimality.MEASURES:
        assert r[m + "_sgd"] == base["ratio_" + m].iloc[0] and r[m + "_reg"] == at["ratio_" + m].iloc[0]
    from smoothness.report.format import edge_tables
    md = edge_tables(e)[0].markdown()
    assert "0.001 (ladder too short)" in md and "→" in md
    assert optimality.edge_table(df[df["regularizer"] == "none"]).empty


def test_examples_are_unregularized_and_spread_over_n(oned_run):
    df = stored_frame(oned_run)
    ex = optimality.examples(df, most=3)
    assert list(ex["n_train"]) == [4, 8] and (ex["regularizer"] == "none").all() and (ex["seed"] == 0).all()


def test_smallest_interpolants_drawn_are_feasible():
    # what the figure draws: each measure's LP interpolant passes through the data and reaches S_min's value
    t = lines.line_task("line-gp:pool=64,heldout=300")
    idx = t.subset(8, 0)
    x, y = t.pool_x[idx, 0].double().numpy(), t.pool_y[idx].double().numpy()
    for m in optimality.MEASURES:
        val, f = oned.smallest_on_grid(m, x, y, t.density)
        assert abs(f(x) - y).max() < 1e-6
        if m != "gradient_path_length":
            closed = {"gradient_norm": oned.smallest_gradient_norm, "function_path_length": oned.smallest_function_path_length}
            want = closed[m](x, y, t.density) if m in closed else oned.smallest_weights_product(x, y)
            assert want <= val + 1e-7 and val <= want * 1.05 + 1e-6, (m, val, want)


def test_the_gpl_note_states_the_bracket_width():
    import pandas as pd

    from smoothness.report.format import gpl_note
    assert "bracket" in gpl_note(pd.Series([float("nan")]))
    assert "exact" in gpl_note(pd.Series([0.0, 0.0]))
    assert "at most 0.23% wide" in gpl_note(pd.Series([0.001, 0.0023]))
