"""Table 1 and Table 2 analyses on hand-made result tables with known answers."""
import numpy as np
import pandas as pd
import pytest

from smoothness.analysis import series, tables
from smoothness.report import format
from smoothness.report.figures import paper_r_norm_points

BASE = dict(data="mnist5k", hidden="256", alpha=0.01, lr=0.01, batch_size=64, max_epochs=100, threshold=1e-5,
            measure_points=1000, segments=1000, points=100, measure_seed=0, fpl_lower_bound=1.0)


def row(pair, seed, n, status="converged", reg="none", lam=0.0, **m):
    vals = {k: m.get(k, 1.0) for k in tables.MEASURES}
    return {**BASE, "pair": pair, "seed": seed, "n_train": n, "status": status, "regularizer": reg, "lam": lam,
            "key": f"{pair}-{seed}-{n}-{reg}-{lam}", **{k: v for k, v in m.items() if k not in vals}, **vals}


def test_kendall_tau_per_dataset_uses_converged_models_only():
    rows = []
    for i, n in enumerate([64, 128, 256, 512]):
        # dataset 3/8: GN increases with N (tau 1), FPL decreases (tau -1); 4/9: GN swaps one pair (tau 2/3)
        rows.append(row("3/8", 0, n, gradient_norm=i, function_path_length=-i, gradient_path_length=i,
                        weights_product=i))
        rows.append(row("4/9", 0, n, gradient_norm=[0, 2, 1, 3][i], function_path_length=i,
                        gradient_path_length=i, weights_product=i))
    # a not-converged model with a wild value must not change anything; it is counted as excluded
    rows.append(row("4/9", 0, 1024, status="not_converged", gradient_norm=-100.0))
    # a regularized model is not part of Table 1
    rows.append(row("4/9", 0, 2048, reg="gradient_norm", lam=1e-3, gradient_norm=-50.0))
    df = pd.DataFrame(rows)
    taus = tables.kendall_taus(df).set_index("pair")
    assert taus.loc["3/8", "gradient_norm"] == pytest.approx(1.0)
    assert taus.loc["3/8", "function_path_length"] == pytest.approx(-1.0)
    assert taus.loc["4/9", "gradient_norm"] == pytest.approx(2 / 3)
    t1 = tables.table1(df).set_index("measure")
    assert t1.loc["GN", "tau_mean"] == pytest.approx((1 + 2 / 3) / 2)
    assert t1.loc["GN", "tau_std"] == pytest.approx(1 / 6)                # population std of {1, 2/3}
    assert t1.loc["FPL", "tau_mean"] == pytest.approx(0.0)
    assert t1.loc["GN", "datasets"] == 2 and t1.loc["GN", "excluded"] == 1 and t1.loc["GN", "converged"] == 8
    assert t1.loc["GN", "paper_tau_mean"] == 0.16


def test_ties_use_tau_b():
    df = pd.DataFrame([row("3/8", 0, n, gradient_norm=v) for n, v in zip([64, 128, 256], [1.0, 1.0, 2.0])])
    # tau-b with one tie among the measure values: (2 concordant - 0 discordant) / sqrt(3 * 2)
    assert tables.kendall_taus(df).loc[0, "gradient_norm"] == pytest.approx(2 / np.sqrt(6))


def test_table2_picks_the_largest_converging_lambda_and_normalizes_by_the_lower_bound():
    rows = []
    for k, pair in enumerate(["3/8", "4/9", "2/3", "5/6"]):
        base = 2.0 + k
        rows.append(row(pair, 0, 256, gradient_norm=base, function_path_length=1.5))
        rows.append(row(pair, 1, 256, gradient_norm=100.0))   # a seed without regularized models: not a baseline
        rows.append(row(pair, 0, 256, reg="gradient_norm", lam=1e-4, gradient_norm=base / 2))
        # lambda 1e-3: only one of four models converges -> not chosen
        rows.append(row(pair, 0, 256, reg="gradient_norm", lam=1e-3, gradient_norm=0.1,
                        status="converged" if k == 0 else "not_converged"))
        # FPL at its own lr with its own baseline: ratio (1.25 - 1) / (1.5 - 1) = 0.5 for every pair
        rows.append(row(pair, 0, 256, lr=0.1, function_path_length=1.5))
        rows.append(row(pair, 0, 256, lr=0.1, reg="function_path_length", lam=1e-4, function_path_length=1.25,
                        status="diverged" if k == 3 else "converged"))
    df = pd.DataFrame(rows)
    t2 = tables.table2(df).set_index("measure")
    gn = t2.loc["GN"]
    assert gn["lam"] == 1e-4 and gn["r_norm_mean"] == pytest.approx(0.5) and gn["datasets"] == 4
    assert gn["unreg_mean"] == pytest.approx(3.5) and gn["reg_mean"] == pytest.approx(1.75)
    assert gn["converged_by_lambda"] == "0: 4/4, 0.0001: 4/4, 0.001: 1/4"
    fpl = t2.loc["FPL"]
    assert fpl["lower_bound"] == 1.0 and fpl["r_norm_mean"] == pytest.approx(0.5) and fpl["datasets"] == 3
    assert fpl["paper_r_norm_mean"] == 0.33
    ratios = tables.table2_ratios(df)
    assert len(ratios) == 4 + 3 and np.allclose(ratios["r"], 0.5)
    figs = {d["measure"]: d for d in tables.figure2_data(df)}
    assert [len(v) for v in figs["GN"]["values"].values()] == [4, 4, 1] and figs["GN"]["chosen"] == 1e-4
    # the edge of the GN ladder lies between 1e-4 and 1e-3; FPL's only lambda converged: the ladder is too short
    assert gn["lam_above"] == 1e-3 and not gn["ladder_short"]
    assert fpl["ladder_short"] and (fpl["lam_above"] is None or np.isnan(fpl["lam_above"]))


def test_table2_baseline_uses_the_pairs_of_the_regularized_models_only():
    # Table 1 trains 4 pairs; the regularizer entry only 2 of them (its own pairs): mu_unreg over those 2
    rows = [row(p, 0, 128, gradient_norm=g) for p, g in (("3/8", 1.0), ("4/9", 3.0), ("2/3", 50.0), ("5/6", 70.0))]
    rows += [row(p, 0, 128, reg="gradient_norm", lam=1e-3, gradient_norm=g / 2) for p, g in (("3/8", 1.0),
                                                                                           ("4/9", 3.0))]
    gn = tables.table2(pd.DataFrame(rows)).iloc[0]
    assert gn["unreg_mean"] == pytest.approx(2.0) and gn["reg_mean"] == pytest.approx(1.0)
    assert gn["converged_by_lambda"] == "0: 2/2, 0.001: 2/2"


def test_no_lambda_converges_gives_an_empty_regularized_column():
    rows = [row("3/8", 0, 256, gradient_norm=1.0),
            row("3/8", 0, 256, reg="gradient_norm", lam=1e-3, status="not_converged")]
    t2 = tables.table2(pd.DataFrame(rows))
    assert t2.loc[0, "lam"] is None or np.isnan(t2.loc[0, "lam"])
    assert np.isnan(t2.loc[0, "reg_mean"]) and t2.loc[0, "datasets"] == 0


def test_status_counts_show_every_model():
    rows = [row("3/8", 0, 64), row("3/8", 1, 64, status="not_converged"), row("3/8", 2, 64, status="diverged")]
    c = tables.status_counts(pd.DataFrame(rows))
    assert c[["converged", "not_converged", "diverged"]].values.tolist() == [[1, 1, 1]]


def test_lr_sweep_means_over_converged_models_per_learning_rate():
    rows = []
    for lr, sharp in ((0.01, [10.0, 20.0]), (0.1, [4.0, 6.0])):
        for seed, s in enumerate(sharp):
            r = row("3/8", seed, 256, sharpness=s, parameter_norm=lr * 10, loss_test=0.2)
            r["lr"] = lr
            rows.append(r)
    bad = row("3/8", 2, 256, status="diverged", sharpness=1e9)
    bad["lr"] = 0.1
    rows.append(bad)
    single = row("4/9", 0, 64, sharpness=3.0)      # a setting/N at one lr only: no sweep
    rows.append(single)
    reg = row("3/8", 0, 256, reg="gradient_norm", lam=1e-3, sharpness=-5.0)
    reg["lr"] = 0.5
    rows.append(reg)
    sweep = series.by_lr(pd.DataFrame(rows)).set_index("lr")
    assert list(sweep.index) == [0.01, 0.1]
    assert sweep.loc[0.01, "sharpness_mean"] == pytest.approx(15.0)
    assert sweep.loc[0.01, "sharpness_std"] == pytest.approx(np.std([10, 20], ddof=1))
    assert sweep.loc[0.1, "sharpness_mean"] == pytest.approx(5.0)       # the diverged model is left out
    assert (sweep.loc[0.1, "models"], sweep.loc[0.1, "converged"], sweep.loc[0.1, "diverged"]) == (3, 2, 1)
    assert sweep.loc[0.1, "two_over_lr"] == pytest.approx(20.0)
    assert sweep.loc[0.1, "parameter_norm_mean"] == pytest.approx(1.0)
    assert "hessian_trace_mean" not in sweep                            # a column no model has
    assert len(series.by_lr(pd.DataFrame([single]))) == 0


def test_table1_per_depth_shows_wp_for_one_hidden_layer_and_the_path_norm_for_deeper_nets():
    rows = []
    for depth, hidden in ((1, "256"), (2, "256-256")):
        for i, n in enumerate([64, 128, 256]):
            wp = float(i) if depth == 1 else np.nan
            pn = float(i) if depth == 1 else float(-i)          # PN = WP for one layer; decreasing for two
            r = row("3/8", 0, n, weights_product=wp, path_norm=pn)
            r.update(hidden=hidden, key=f"{hidden}-{n}")
            rows.append(r)
    t1 = tables.table1(pd.DataFrame(rows))
    one = t1[t1["setting"].str.contains("hidden 256,")].set_index("measure")
    two = t1[t1["setting"].str.contains("hidden 256-256")].set_index("measure")
    assert list(one.index) == ["GN", "FPL", "GPL", "WP"] and one.loc["WP", "tau_mean"] == pytest.approx(1.0)
    assert list(two.index) == ["GN", "FPL", "GPL", "PN"] and two.loc["PN", "tau_mean"] == pytest.approx(-1.0)
    assert pd.isna(two.loc["PN", "paper_tau_mean"])


def test_no_learning_rate_sweep_when_each_optimizer_has_its_own_single_rate():
    rows = [row("3/8", 0, n, optimizer=opt, lr=lr) for n in (64, 128) for opt, lr in (("sgd", 0.01), ("adam", 1e-3))]
    df = pd.DataFrame(rows)
    df["lr"] = [r["lr"] for r in rows]
    assert series.by_lr(df).empty
    t1 = tables.table1(df)
    assert t1["setting"].str.contains(", adam,").sum() == 4 and len(t1) == 8   # one Table 1 per optimizer


def test_table2_at_fixed_lambdas_and_means_over_the_same_pairs_as_the_ratios():
    # GN at lambda 1e-3 (fixed, converging on 2 of 3 pairs) and 3e-3 (the ladder's edge: 2 of 3 converge too).
    rows = []
    for k, pair in enumerate(["3/8", "4/9", "2/3"]):
        rows.append(row(pair, 0, 256, gradient_norm=2.0 + k))
        rows.append(row(pair, 0, 256, reg="gradient_norm", lam=1e-3, gradient_norm=1.0,
                        status="not_converged" if k == 2 else "converged"))
        rows.append(row(pair, 0, 256, reg="gradient_norm", lam=3e-3, gradient_norm=0.5,
                        status="not_converged" if k == 0 else "converged"))
    df = pd.DataFrame(rows)
    edge = tables.table2(df).set_index("measure").loc["GN"]
    assert edge["lam"] == 3e-3 and edge["rule"] == "edge" and edge["datasets"] == 2
    assert edge["unreg_mean"] == pytest.approx((3.0 + 4.0) / 2)     # the pairs of the ratios (4/9, 2/3), not all three
    assert edge["r_norm_mean"] == pytest.approx((0.5 / 3 + 0.5 / 4) / 2)
    fixed = tables.table2(df, lambdas={"gradient_norm": 1e-3, "weights_product": 3e-5}).set_index("measure").loc["GN"]
    assert fixed["lam"] == 1e-3 and fixed["rule"] == "fixed"
    assert (fixed["converged_at_lam"], fixed["models_at_lam"], fixed["datasets"]) == (2, 3, 2)
    assert fixed["unreg_mean"] == pytest.approx((2.0 + 3.0) / 2) and fixed["reg_mean"] == pytest.approx(1.0)
    assert fixed["r_norm_mean"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    # a regularizer the store did not train at its fixed lambda has no row
    assert len(tables.table2(df, lambdas={"weights_product": 3e-5})) == 0


def test_a_baseline_serves_regularizers_with_other_epoch_caps():
    # One lambda = 0 model (cap 25,000) is the baseline of GN trained with cap 15,000, as long as it converged within
    # 15,000 epochs; one that needed more counts as not converged there.
    rows = [row("3/8", 0, 256, max_epochs=25000, epochs=9000, gradient_norm=2.0),
            row("4/9", 0, 256, max_epochs=25000, epochs=20000, gradient_norm=3.0)]
    for pair in ("3/8", "4/9"):
        rows.append(row(pair, 0, 256, max_epochs=15000, epochs=100, reg="gradient_norm", lam=1e-3, gradient_norm=1.0))
    t = tables.table2(pd.DataFrame(rows)).set_index("measure").loc["GN"]
    assert t["datasets"] == 1 and t["r_norm_mean"] == pytest.approx(0.5) and t["max_epochs"] == 15000
    assert "0: 1/2" in t["converged_by_lambda"]


def test_r_norm_by_n_at_fixed_lambda():
    rows = []
    for n, r in ((512, 0.9), (2048, 0.7), (10000, 0.4)):
        for k, pair in enumerate(["5/9", "7/9"]):
            rows.append(row(pair, 0, n, gradient_norm=1.0 + k))
            rows.append(row(pair, 0, n, reg="gradient_norm", lam=1e-3, gradient_norm=r * (1.0 + k)))
    df = pd.DataFrame(rows)
    rbn = series.r_norm_by_n(tables.table2_ratios(df, {"gradient_norm": 1e-3}))
    assert list(rbn["n_train"]) == [512, 2048, 10000]
    assert list(rbn["r_norm_mean"]) == pytest.approx([0.9, 0.7, 0.4])
    assert list(rbn["datasets"]) == [2, 2, 2]
    assert not len(series.r_norm_by_n(tables.table2_ratios(df[df["n_train"] == 512], {"gradient_norm": 1e-3})))
    assert list(rbn["lr"]) == [0.01] * 3 and rbn["paper_lr"].all() and not rbn["lr_left_out"].any()
    # The figure marks the paper's r_norm beside a line only where the line's λ is the paper's.
    assert paper_r_norm_points(rbn) == {(rbn["table"].iloc[0], "GN", 1e-3): (0.31, 0.13)}
    assert paper_r_norm_points(rbn.assign(lam=1e-4)) == {}


def test_r_norm_by_n_keeps_one_learning_rate_per_cell_and_says_which():
    # FPL (paper's lr 0.1) at N = 512 trained at lr 0.1 and 0.01 on the same pairs, at N = 10,000 at 0.01 only: a
    # pair must not count twice at N = 512 (the paper's rate is kept there), and N = 10,000's rate is named.
    rows = []
    for n, lrs in ((512, (0.1, 0.01)), (10000, (0.01,))):
        for lr in lrs:
            for k, pair in enumerate(["5/9", "7/9"]):
                r = 0.8 if lr == 0.1 else 0.5
                rows.append(row(pair, 0, n, lr=lr, function_path_length=2.0 + k))
                rows.append(row(pair, 0, n, lr=lr, reg="function_path_length", lam=1e-4,
                                function_path_length=1.0 + r * (1.0 + k)))
    rbn = series.r_norm_by_n(tables.table2_ratios(pd.DataFrame(rows), {"function_path_length": 1e-4}))
    assert list(rbn["n_train"]) == [512, 10000] and list(rbn["datasets"]) == [2, 2]
    assert list(rbn["lr"]) == [0.1, 0.01] and list(rbn["paper_lr"]) == [True, False]
    assert list(rbn["r_norm_mean"]) == pytest.approx([0.8, 0.5]) and list(rbn["lr_left_out"]) == ["0.01", ""]
    text = format.r_norm_by_n_tables(rbn)[0].markdown()
    assert "(2; lr 0.1)" in text and "(2; lr 0.01)" in text and "FPL at N 512: lr 0.01" in text
