"""The verdict per measure: the paper's reading as rules, applied to the paper's values and to hand-made tables."""
import math

import pandas as pd
import pytest

from smoothness.analysis import tables, verdict
from smoothness.errors import ConfigError
from smoothness.experiments.configuration import grid


def test_the_rules_on_the_papers_values_give_the_papers_conclusions():
    # Volhejn & Lampert: SGD does not optimize GN or FPL (low tau, reducible); GPL and WP are consistent.
    assert verdict._paper_reading("GN") == verdict._paper_reading("FPL") == verdict.NOT_OPTIMIZED
    assert verdict._paper_reading("GPL") == verdict._paper_reading("WP") == verdict.CONSISTENT


def test_the_data_must_support_a_reading():
    assert verdict.read_tau(0.9, 1, 4)[0] is None and "too little data" in verdict.read_tau(0.9, 1, 4)[1]
    assert verdict.read_tau(0.9, 5, 2)[0] is None
    assert verdict.read_tau(float("nan"), 5, 4)[0] is None
    assert verdict.read_tau(0.95, 5, 4)[0] == "monotone" and verdict.read_tau(0.3, 5, 4)[0] == "not"
    assert verdict.read_tau(0.6, 5, 4)[0] == "partly"
    # a high r_norm with every lambda converged says nothing: a larger lambda might still reduce the measure
    kind, why = verdict.read_r(0.95, 5, 1e-3, ladder_short=True)
    assert kind is None and "extend the ladder" in why
    assert verdict.read_r(0.95, 5, 1e-3, ladder_short=False)[0] == "not"
    assert verdict.read_r(0.4, 5, 1e-3, ladder_short=True)[0] == "reducible"      # reduced already: enough to say so
    assert verdict.read_r(0.4, 5, None, ladder_short=False)[0] is None            # no lambda converged
    assert "start the ladder lower" in verdict.read_r(0.4, 5, None, False, baselines=3)[1]
    assert "no unregularized model reached the loss threshold either" in verdict.read_r(0.4, 5, None, False,
                                                                                        baselines=0)[1]
    # a classification task is one dataset per seed: the missing l_S is still the reason given
    assert "needs the measure's lower bound l_S" in verdict.read_r(float("nan"), 1, 1e-4, False, unreg=1.3,
                                                                     lower=float("nan"))[1]
    assert verdict.read_r(0.9, 1, 1e-3, False)[1] == "too little data for r_norm (1 dataset; need 2)"
    kind, why = verdict.read_r(float("nan"), 2, 1e-4, False, unreg=1.3, lower=float("nan"))   # FPL, K outputs
    assert kind is None and "lower bound l_S" in why and "too little data" not in why
    # FPL's r_norm = (S_reg - 1) / (S_unreg - 1): meaningless when S_unreg hardly exceeds its lower bound 1
    kind, why = verdict.read_r(1.85, 2, 3e-4, False, unreg=0.999, lower=1.0)
    assert kind is None and "near-zero difference" in why
    assert verdict.read_r(0.33, 45, 1e-4, False, unreg=1.17, lower=1.0)[0] == "reducible"   # the paper's FPL
    assert verdict.read_r(0.95, 5, 1e-3, False, unreg=0.02, lower=0.0)[0] == "not"           # l_S = 0: any mean
    assert verdict.reading("monotone", None) == verdict.INCONCLUSIVE
    assert verdict.reading("monotone", "not") == verdict.CONSISTENT
    assert verdict.reading("not", None) == verdict.reading(None, "reducible") == verdict.NOT_OPTIMIZED


def _t1(measure, tau, datasets=6, n_max=512):
    return {"data": "mnist5k", "measure": measure, "tau_mean": tau, "tau_std": 0.1, "datasets": datasets,
            "converged": 4 * datasets, "n_sizes": 4, "n_max": n_max, "paper_tau_mean": 0.5}


def _t2(measure, r, lam=1e-3, short=False, datasets=5):
    return {"data": "mnist5k", "measure": measure, "r_norm_mean": r, "r_norm_std": 0.05, "datasets": datasets,
            "lam": lam, "ladder_short": short, "n_train": 256, "paper_r_norm_mean": 0.5}


def test_verdict_table_per_measure():
    t1 = pd.DataFrame([_t1("GN", 0.98), _t1("FPL", 0.2), _t1("GPL", 1.0), _t1("WP", 1.0, datasets=1)])
    t2 = pd.DataFrame([_t2("GN", 0.5), _t2("FPL", 0.95), _t2("GPL", 0.97), _t2("WP", 0.99, short=True)])
    v = verdict.verdict(t1, t2).set_index("measure")
    assert v.loc["GN", "reading"] == verdict.NOT_OPTIMIZED          # monotone, but regularization halves it
    assert v.loc["FPL", "reading"] == verdict.NOT_OPTIMIZED         # not monotone
    assert v.loc["GPL", "reading"] == verdict.CONSISTENT
    assert v.loc["WP", "reading"] == verdict.INCONCLUSIVE           # one dataset, and the ladder was too short
    assert "too little data" in v.loc["WP", "why"] and "extend the ladder" in v.loc["WP", "why"]
    assert "N ≤ 512" in v.loc["GN", "why"]
    assert v.loc["GN", "paper_reading"] == verdict.NOT_OPTIMIZED and v.loc["GN", "tau_datasets"] == 6
    only1 = verdict.verdict(t1, t2[:0]).set_index("measure")
    assert only1.loc["GPL", "reading"] == verdict.INCONCLUSIVE and "no Table 2 runs" in only1.loc["GPL", "why"]
    assert math.isnan(only1.loc["GPL", "r_norm"])


def test_the_verdict_never_mixes_architectures_and_names_the_setting_it_chose():
    """Two architectures on one data set answer two questions: GN's tau of the CNN must not sit beside WP's of the
    MLP. Within one task, the setting with the most datasets stands for it, named in 'why' (ties: the first label)."""
    mlp, cnn = "mnist5k, hidden 256", "mnist5k, cnn 8-16 3 max"
    t1 = pd.DataFrame([{**_t1("GN", 0.1), "task": mlp, "setting": "mlp lr 0.1"},
                       {**_t1("WP", 1.0), "task": mlp, "setting": "mlp lr 0.1"},
                       {**_t1("GN", 1.0, datasets=9), "task": cnn, "setting": "cnn lr 0.05"},
                       {**_t1("GN", 0.2, datasets=9), "task": cnn, "setting": "cnn lr 0.01"}])
    v = verdict.verdict(t1, pd.DataFrame())
    assert list(v["task"]) == [cnn, mlp, mlp] and list(v["measure"]) == ["GN", "GN", "WP"]
    by = v.set_index(["task", "measure"])
    assert by.loc[(mlp, "GN"), "tau"] == 0.1 and by.loc[(mlp, "GN"), "reading"] == verdict.NOT_OPTIMIZED
    assert by.loc[(cnn, "GN"), "tau"] == 0.2 and "τ from cnn lr 0.01" in by.loc[(cnn, "GN"), "why"]   # tie: label
    assert "τ from" not in by.loc[(mlp, "GN"), "why"]
    assert verdict.verdict(t1[::-1], pd.DataFrame()).equals(v)          # the store's row order does not matter


def test_a_lambda_ladder_in_a_grid():
    g = grid.parse({"name": "l", "n_train": 64, "regularizers": [
        {"name": "gradient_norm", "lam": {"start": 1e-5, "factor": 3, "end": 1e-3}}]})
    lam = g.regularizers[0]["lam"]
    assert lam == [0.0, 1e-5, 3e-5, 9e-5, 2.7e-4, 8.1e-4]
    assert sorted({c.lam for c in g.configs()}) == lam
    exact = grid.parse({"name": "l", "n_train": 64, "regularizers": [
        {"name": "gradient_norm", "lam": {"start": 1e-4, "factor": 10, "end": 1e-2}}]})
    assert exact.regularizers[0]["lam"] == [0.0, 1e-4, 1e-3, 1e-2]      # the end itself, despite rounding
    for bad, match in [({"start": 1e-5, "factor": 1, "end": 1e-3}, "factor > 1"),
                       ({"start": 1e-5, "end": 1e-3}, "start, factor and end"),
                       ({"start": 1e-3, "factor": 2, "end": 1e-5}, "end >= start"),
                       ({"start": 1e-9, "factor": 1.1, "end": 1.0}, "raise the factor"),
                       ({"start": 1e-5, "factor": 2, "end": 1e-3, "steps": 3}, "steps"),
                       ({"start": -1, "factor": 2, "end": 1e-3}, "lam.start")]:
        with pytest.raises(ConfigError, match=match):
            grid.parse({"name": "l", "n_train": 64, "regularizers": [{"name": "gradient_norm", "lam": bad}]})


def test_a_std_at_rounding_level_is_shown_as_zero():
    from smoothness.report import format
    assert format._pm(1.0, 1.1e-16) == "1 ± 0"            # taus that are all 1 up to the last bit
    assert format._pm(0.452, 0.27) == "0.452 ± 0.27" and format._pm(0.5, float("nan")) == "0.5"


def test_table2_says_why_no_lambda_was_chosen():
    from types import SimpleNamespace

    from smoothness.report import format as fmt
    assert "start the ladder lower" in fmt._lam_cell(SimpleNamespace(lam=None, baselines_converged=2))
    assert "no unregularized model reached" in fmt._lam_cell(SimpleNamespace(lam=None, baselines_converged=0))


def test_the_datasets_of_a_task_of_classes_are_its_seeds_and_those_of_pairs_pairs_and_seeds():
    from smoothness.report import format as fmt
    assert tables.datasets_words(2, "all") == "2 datasets (seeds of the task of classes all)"
    assert tables.datasets_words(6, "") == tables.datasets_words(6, float("nan")) == "6 (pair, seed) datasets"
    t1 = pd.DataFrame([{"setting": "s", "measure": "GN", "tau_mean": 0.5, "tau_std": 0.1, "paper_tau_mean": 0.9,
                        "paper_tau_std": 0.1, "datasets": 2, "converged": 6, "models": 6, "excluded": 0,
                        "classes": "all"}])
    assert "mean ± std over 2 datasets (seeds of the task of classes all);" in fmt.table1_tables(t1)[0].note
    v = pd.DataFrame([{"task": "t", "measure": "GN", "tau": 0.5, "tau_std": 0.1, "paper_tau": 0.9, "tau_datasets": 2,
                       "n_max": 64, "r_norm": 0.9, "r_norm_std": 0.1, "paper_r_norm": 0.9, "r_datasets": 2,
                       "lam": 1e-3, "n_train_reg": 64, "reading": "-", "paper_reading": "-", "why": ""}])
    assert "(2 datasets, λ 0.001, N 64)" in fmt.verdict_tables(v)[0].rows[0][2]


def test_a_task_of_classes_names_its_loss_either_way_and_a_binary_task_only_a_loss_other_than_the_papers():
    row = {"data": "mnist5k", "model": "mlp", "hidden": "256", "classes": "", "loss": "mse"}
    assert tables.task_label(row) == "mnist5k, hidden 256"
    assert tables.task_label({**row, "loss": "cross_entropy"}) == "mnist5k, hidden 256, cross_entropy"
    ten = {**row, "classes": "all"}
    assert tables.task_label(ten) == "mnist5k classes all, hidden 256, mse (one-hot targets)"
    assert tables.task_label({**ten, "loss": "cross_entropy"}) == "mnist5k classes all, hidden 256, cross_entropy"
    assert tables.task_label({**ten, "loss": float("nan")}) == tables.task_label({**ten, "loss": pd.NA}) \
        == tables.task_label(ten)
    assert tables.task_label({**row, "classes": float("nan")}) == tables.task_label({**row, "classes": None}) \
        == "mnist5k, hidden 256"
