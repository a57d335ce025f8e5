"""Analyses of a results table (one row per model, as Store.frame() returns): Table 1 and Table 2 of the paper.

Only converged models enter the statistics (paper sec. 4.1); the models left out are counted, not hidden.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from smoothness import paper
from smoothness.experiments.configuration import staging
from smoothness.experiments.configuration.config import ADDED_FIELDS, SETTING_FIELDS
from smoothness.measures import registry
from smoothness.runtime.values import counted
from smoothness.training.regularizers import PAPER_LAMBDAS  # noqa: F401 (the paper's lambdas: part of analysis's API)

# The four measures of the paper's tables, with their short names (all lists come from registry.py).
MEASURES = registry.shorts(paper=True)
# The measure each regularizer penalizes (eq. 15).
REGULARIZED_MEASURE = registry.regularized_measure()
SHORT = registry.shorts()
# Table 1's measures: the paper's four, and the path norm (WP generalized to any depth; shown where WP is not
# defined, i.e. for networks with more than one hidden layer: for one hidden layer PN equals WP).
TAU_MEASURES = registry.shorts(table1=True)

# The paper's values (smoothness.paper).
PAPER_TABLE1, PAPER_TABLE2 = paper.TABLE1, paper.TABLE2

# Columns that define a training setting apart from the dataset (pair), seed, size and regularization: the RunConfig
# fields declared as such (config.SETTING_FIELDS).
SETTING = list(SETTING_FIELDS)
# The values of the added fields in a results table (Store.frame): the family and the classes as words.
FRAME_DEFAULTS = {**ADDED_FIELDS, "model": "mlp", "classes": ""}
# A regularized setting also has its penalty's points per segment; its baselines are matched on SETTING without the
# epoch cap (_baselines).
REG_SETTING = SETTING + ["penalty_points"]
_BASE_MATCH = [c for c in SETTING if c != "max_epochs"]


def complete(df: pd.DataFrame) -> pd.DataFrame:
    """df with every setting column, filling those added after the first results (runconfig.ADDED_FIELDS) with
    the value that records predating them had."""
    missing = {c: v for c, v in FRAME_DEFAULTS.items() if c not in df}
    return df.assign(**missing) if missing and len(df) else df


def with_columns(df: pd.DataFrame, columns) -> pd.DataFrame:
    """df with a column of NaN for each of these measure columns that its records lack (records of a family, or
    from a version, that did not compute the measure): a value that is not there reads as not measured."""
    missing = {c: np.nan for c in columns if c not in df}
    return df.assign(**missing) if missing else df


def setting_label(row, with_lr: bool = True) -> str:
    """A setting in words (data, optimizer, architecture, rates, cap, batch, threshold) for table titles."""
    lr = f", lr {row['lr']:g}, cap {row['max_epochs']} epochs" if with_lr else ""
    opt = "" if row.get("optimizer", "sgd") == "sgd" else f", {row['optimizer']}"
    opt += f" (rho {row['rho']:g})" if row.get("optimizer") == "sam" and "rho" in row else ""
    opt += "" if row.get("matmul_precision", "fp32") == "fp32" else f", {row['matmul_precision']} matmuls"
    pts = row.get("penalty_points", ADDED_FIELDS["penalty_points"])
    pen = "" if pts == ADDED_FIELDS["penalty_points"] or pd.isna(pts) else f", {int(pts)} points per penalty segment"
    task, arch, loss = _task_parts(row)
    return (f"{row['data']}{task}{opt}, {arch}{loss}, alpha {row['alpha']:g}{lr}, batch {row['batch_size']}, "
            f"threshold {row['threshold']:g}{pen}")


def _task_parts(row) -> tuple[str, str, str]:
    """The words of a setting's task (classes), architecture (family or hidden widths) and loss."""
    model = row.get("model", "mlp")
    arch = f"hidden {row['hidden']}" if model in ("mlp", None) or pd.isna(model) else model
    classes, name = row.get("classes"), row.get("loss")
    task = f" classes {classes}" if isinstance(classes, str) and classes else ""   # NaN, None, '': a binary task
    name = name if isinstance(name, str) and name else "mse"                       # NaN, None, pd.NA: the default
    # the paper's loss of a binary task goes unnamed; a task of classes names either loss
    loss = "" if name == "mse" and not task else ", mse (one-hot targets)" if name == "mse" else f", {name}"
    return task, arch, loss


def datasets_words(n: int, classes) -> str:
    """n datasets in words: (pair, seed) datasets of binary tasks, the seeds of a task of classes."""
    if isinstance(classes, str) and classes:
        return f"{counted(n, 'dataset')} (seeds of the task of classes {classes})"
    return f"{n} (pair, seed) datasets"


def task_label(row) -> str:
    """The question a verdict answers, in words: the data (and classes), the architecture and the loss of a setting;
    settings that differ in rates, caps or optimizer answer the same question."""
    task, arch, loss = _task_parts(row)
    return f"{row['data']}{task}, {arch}{loss}"


def sampling_error(df: pd.DataFrame) -> pd.DataFrame:
    """The Monte Carlo error of the estimated measures: per measure with a standard-error column (registry
    columns ending in _se, held-out and training points), over the models with finite values, the median, 90th
    percentile and largest relative standard error se / |value|. Empty for stores without standard errors."""
    rows = []
    for m in registry.REGISTRY:
        if m.key + "_se" not in m.columns:
            continue
        for suffix in ("", "_train") if m.sampled else ("",):
            col, se = registry.on_points(m.key, suffix), registry.on_points(m.key + "_se", suffix)
            if col not in df or se not in df:
                continue
            v, e = pd.to_numeric(df[col], errors="coerce"), pd.to_numeric(df[se], errors="coerce")
            ok = np.isfinite(v) & np.isfinite(e) & (v != 0)
            if not ok.any():
                continue
            rel = (e[ok] / v[ok].abs()).to_numpy()
            rows.append({"measure": m.short + (" (training points)" if suffix else ""), "column": col,
                         "models": int(ok.sum()), "rel_se_median": float(np.median(rel)),
                         "rel_se_p90": float(np.quantile(rel, 0.9)), "rel_se_max": float(rel.max())})
    return pd.DataFrame(rows)


def status_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Models per regularizer, lambda and training size, by status (converged / not_converged / diverged)."""
    if not len(df):
        return pd.DataFrame()
    t = df.pivot_table(index=["regularizer", "lam", "lr", "n_train"], columns="status", values="key",
                       aggfunc="count", fill_value=0)
    for s in ("converged", "not_converged", "diverged"):
        if s not in t.columns:
            t[s] = 0
    t = t[["converged", "not_converged", "diverged"]].reset_index()
    t.columns.name = None
    return t


def kendall_taus(df: pd.DataFrame) -> pd.DataFrame:
    """Kendall's tau-b between training size and each measure, per setting, dataset (pair) and seed.

    Uses the unregularized models only, and of those the converged ones; a (pair, seed) needs at least two
    converged sizes. Columns: setting columns, pair, seed, n_models (converged sizes), one column per measure.
    """
    df = complete(df)
    base = df[(df["regularizer"] == "none") & (df["status"] == "converged")]
    rows = []
    for keys, g in base.groupby(SETTING + ["pair", "seed"], sort=True):
        if g["n_train"].nunique() < 2:
            continue
        row = dict(zip(SETTING + ["pair", "seed"], keys))
        row["n_models"] = len(g)
        for m in TAU_MEASURES:
            if m in g and g[m].notna().sum() >= 2:
                ok = g[g[m].notna()]
                row[m] = kendalltau(ok["n_train"], ok[m]).statistic   # tau-b, as scipy computes by default
            else:
                row[m] = np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def table1(df: pd.DataFrame, taus: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 1: mean and std of Kendall's tau over (pair, seed), per setting; with the paper's values.

    taus: kendall_taus(df), if already computed."""
    df = complete(df)
    taus = kendall_taus(df) if taus is None else taus
    if not len(taus):
        return pd.DataFrame()
    out = []
    unreg = df[df["regularizer"] == "none"]
    for keys, g in taus.groupby(SETTING, sort=True):
        sel = unreg
        for c, v in zip(SETTING, keys):
            sel = sel[sel[c] == v]
        has = {m: m in g and g[m].notna().any() for m in TAU_MEASURES}
        for m, short in TAU_MEASURES.items():
            if not registry.shown(m, has):      # PN only where WP is not defined
                continue
            vals = g[m].dropna() if m in g else g["n_models"][:0]
            pm, ps = PAPER_TABLE1.get(m, (None, None))
            setting = dict(zip(SETTING, keys))
            out.append({"setting": setting_label(setting), "task": task_label(setting), "measure": short,
                        "tau_mean": vals.mean(), "tau_std": vals.std(ddof=0) if len(vals) > 1 else np.nan,
                        "datasets": len(vals), "models": len(sel), "data": keys[0],
                        "n_sizes": int(sel["n_train"].nunique()), "n_max": int(sel["n_train"].max()),
                        "converged": int((sel["status"] == "converged").sum()),
                        "excluded": int((sel["status"] != "converged").sum()),
                        "paper_tau_mean": pm, "paper_tau_std": ps, "classes": setting.get("classes", "")})
    return pd.DataFrame(out)


def _largest_lambda(counts: pd.Series, totals: pd.Series) -> float | None:
    """The largest lambda at which at least half of the models reached the loss threshold (the paper's rule,
    sec. 4.3). Table 2 also records the next lambda tried above it (where training failed) and whether there
    was none (`ladder_short`: the edge lies above the ladder, so the true largest lambda is unknown)."""
    ok = [lam for lam in sorted(totals.index) if staging.passed(counts.get(lam, 0), totals[lam])]
    return ok[-1] if ok else None


def _pairing(r: dict) -> pd.DataFrame:
    """The datasets (pair, seed) of one regularized group where both the baseline and the model at the chosen lambda
    converged, with both values of the regularized measure and l_S (the rows of eq. 16)."""
    m = REGULARIZED_MEASURE[r["regularizer"]]
    cols = ["pair", "seed", "unregularized", "regularized", "lower_bound"]
    if r["lam"] is None:
        return pd.DataFrame(columns=cols)
    b = r["base"][r["base"]["status"] == "converged"].set_index(["pair", "seed"])
    a = r["at"][r["at"]["status"] == "converged"].set_index(["pair", "seed"])
    rows = []
    for idx in sorted(set(b.index) & set(a.index)):
        lower = float(b.loc[idx, "fpl_lower_bound"]) if m == "function_path_length" else 0.0
        rows.append({"pair": idx[0], "seed": idx[1], "unregularized": float(b.loc[idx, m]),
                     "regularized": float(a.loc[idx, m]), "lower_bound": lower})
    return pd.DataFrame(rows, columns=cols)


def table2_ratios(df: pd.DataFrame, lambdas: dict | None = None) -> pd.DataFrame:
    """Per regularizer and dataset: S(f_unreg), S(f_reg) at the chosen lambda, l_S and the ratio of eq. 16.

    lambdas: {regularizer: lambda} to take those fixed lambdas (the paper's, say) instead of the largest one still
    converging; groups that did not train that lambda are left out."""
    rows = []
    for r in regularized_groups(df, lambdas):
        for p in _pairing(r).itertuples():
            rows.append({"setting": r["label"], "table": r["table_n"], "n_train": r["n_train"],
                         "regularizer": r["regularizer"], "measure": SHORT[REGULARIZED_MEASURE[r["regularizer"]]],
                         "lam": r["lam"], "lr": r["lr"], "pair": p.pair, "seed": p.seed,
                         "unregularized": p.unregularized, "regularized": p.regularized, "lower_bound": p.lower_bound,
                         "r": (p.regularized - p.lower_bound) / (p.unregularized - p.lower_bound)})
    return pd.DataFrame(rows)


def _baselines(df: pd.DataFrame, g: pd.DataFrame, setting: dict) -> pd.DataFrame:
    """The lambda = 0 models that serve as baselines of the regularized models g (one setting and N): the same
    setting, N, pairs and seeds, at any epoch cap (so that one baseline serves regularizers with different caps,
    as the paper's GN at 15,000 epochs and the others at 25,000). Per (pair, seed) the model with g's own cap is
    taken if there is one, else the one with the largest cap; a baseline that converged after more epochs than g's
    cap counts as not converged, as it would have with that cap."""
    cap = int(setting["max_epochs"])
    base = df[(df["regularizer"] == "none") & df["seed"].isin(g["seed"].unique()) & df["pair"].isin(g["pair"].unique())
              & (df["n_train"] == setting["n_train"])]
    for c in _BASE_MATCH:
        base = base[base[c] == setting[c]]
    if not len(base):
        return base
    base = base.assign(_own=base["max_epochs"] == cap).sort_values(["_own", "max_epochs"], ascending=False,
                                                                   kind="stable")
    base = base.drop_duplicates(["pair", "seed"]).drop(columns="_own")
    if "epochs" not in base:
        return base.assign(max_epochs=cap)
    late = (base["status"] == "converged") & (base["epochs"] > cap)
    return base.assign(status=base["status"].where(~late, "not_converged"), max_epochs=cap)


def regularized_groups(df: pd.DataFrame, lambdas: dict | None = None):
    """For each regularizer and setting (incl. N): its lambda = 0 baseline rows and the chosen lambda's rows: the
    largest lambda still converging, or with lambdas {regularizer: lambda} that fixed lambda (groups that did not
    train it are skipped)."""
    df = with_columns(complete(df), REGULARIZED_MEASURE.values())
    key = REG_SETTING + ["n_train"]
    regd = df[df["regularizer"] != "none"]
    for (reg, *keys), g in regd.groupby(["regularizer"] + key, sort=True):
        setting = dict(zip(key, keys))
        base = _baselines(df, g, setting)
        allr = pd.concat([base.assign(lam=0.0), g])
        totals = allr.groupby("lam").size()
        conv = allr[allr["status"] == "converged"].groupby("lam").size()
        pos = totals[totals.index > 0]
        if lambdas is None:
            lam = _largest_lambda(conv, pos)
        elif reg in lambdas and any(np.isclose(pos.index, lambdas[reg], rtol=1e-9, atol=0)):
            lam = float(pos.index[np.isclose(pos.index, lambdas[reg], rtol=1e-9, atol=0)][0])
        else:
            continue
        label = setting_label(setting) + f", N {keys[-1]}"
        above = [x for x in sorted(pos.index) if lam is not None and x > lam]
        no_n = {**setting, "max_epochs": 0}
        yield {"regularizer": reg, "lam": lam, "lam_above": above[0] if above else None,
               "ladder_short": lam is not None and not above, "base": base,
               "at": g[g["lam"] == lam] if lam is not None else g[:0],
               "all": allr, "totals": totals, "converged": conv, "label": label, "n_train": keys[-1],
               "lr": setting["lr"], "max_epochs": setting["max_epochs"], "data": setting["data"],
               "penalty_points": setting["penalty_points"],
               "table": setting_label(setting, with_lr=False) + f", N {keys[-1]}", "task": task_label(setting),
               "table_n": setting_label(no_n, with_lr=False)}


def table2(df: pd.DataFrame, ratios: pd.DataFrame | None = None, lambdas: dict | None = None) -> pd.DataFrame:
    """Table 2: per regularizer, the unregularized mean, the regularized mean at the largest lambda whose models
    still reach the loss threshold (or at the fixed lambdas given, as table2_ratios), l_S, and r_norm mean and std
    (eq. 16); with the paper's values. Both means and r_norm are over the same datasets: those where the baseline
    and the model at the chosen lambda converged (with none, the baseline mean is over all converged baselines)."""
    ratios = table2_ratios(df, lambdas) if ratios is None else ratios   # table2_ratios(df, lambdas), if computed
    out = []
    for r in regularized_groups(df, lambdas):
        reg, lam = r["regularizer"], r["lam"]
        m = REGULARIZED_MEASURE[reg]
        base_ok = r["base"][r["base"]["status"] == "converged"]
        rr = ratios[(ratios["regularizer"] == reg) & (ratios["setting"] == r["label"])] if len(ratios) else ratios
        paper = PAPER_TABLE2.get(m, (None,) * 5)
        if len(rr):
            unreg, regm, lower = rr["unregularized"].mean(), rr["regularized"].mean(), rr["lower_bound"].mean()
        else:
            unreg = base_ok[m].mean() if len(base_ok) else np.nan
            lower = float(base_ok["fpl_lower_bound"].mean()) if m == "function_path_length" and len(base_ok) else 0.0
            regm = np.nan
        tried = ", ".join(f"{x:g}: {int(r['converged'].get(x, 0))}/{int(n)}" for x, n in r["totals"].items())
        at_n = int(r["totals"].get(lam, 0)) if lam is not None else 0
        out.append({"setting": r["label"], "table": r["table"], "task": r["task"], "data": r["data"],
                    "n_train": r["n_train"],
                    "lr": r["lr"], "max_epochs": r["max_epochs"], "penalty_points": r["penalty_points"],
                    "regularizer": reg, "measure": SHORT[m], "rule": "edge" if lambdas is None else "fixed",
                    "lam": lam, "lam_above": r["lam_above"], "ladder_short": r["ladder_short"],
                    "converged_at_lam": int(r["converged"].get(lam, 0)) if lam is not None else 0,
                    "baselines_converged": int(r["converged"].get(0.0, 0)),
                    "models_at_lam": at_n,
                    "unreg_mean": unreg, "reg_mean": regm, "lower_bound": lower,
                    "r_norm_mean": rr["r"].mean() if len(rr) else np.nan,
                    "r_norm_std": rr["r"].std(ddof=0) if len(rr) > 1 else np.nan, "datasets": len(rr),
                    "converged_by_lambda": tried,
                    "paper_unreg_mean": paper[0], "paper_reg_mean": paper[1], "paper_lower_bound": paper[2],
                    "paper_r_norm_mean": paper[3], "paper_r_norm_std": paper[4]})
    return pd.DataFrame(out)


def figure2_data(df: pd.DataFrame) -> list[dict]:
    """Per regularizer (and setting): the converged models' measure values for each lambda (incl. 0)."""
    out = []
    order = list(REGULARIZED_MEASURE)
    for r in sorted(regularized_groups(df), key=lambda r: (r["table"], order.index(r["regularizer"]))):
        m = REGULARIZED_MEASURE[r["regularizer"]]
        ok = r["all"][r["all"]["status"] == "converged"]
        values = {lam: ok[ok["lam"] == lam][m].dropna().to_numpy() for lam in sorted(r["totals"].index)}
        out.append({"regularizer": r["regularizer"], "measure": SHORT[m], "label": r["label"], "values": values,
                    "n_train": r["n_train"], "lr": r["lr"],
                    "totals": r["totals"], "chosen": r["lam"]})
    return out
