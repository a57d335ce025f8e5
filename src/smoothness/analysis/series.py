"""Analyses along one axis of a results table (as Store.frame() returns): how the measures of unregularized models
change with the training size N, the learning rate and the depth, and how Table 2's r_norm (eq. 16) changes with N.
Only converged models enter the statistics (paper sec. 4.1)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from smoothness.analysis.tables import SETTING, complete
from smoothness.measures import registry
from smoothness.training.regularizers import default_lr


def _one_rate(h: pd.DataFrame, reg: str) -> tuple[float, bool, list[float]]:
    """The learning rate whose ratios stand for one regularizer, lambda and N when models were trained there at
    several (a dataset must not count twice): the paper's rate for the regularizer if it is among them, else the
    one with the most datasets (the smaller on a tie); whether it is the paper's; and the rates left out."""
    counts = h.groupby("lr").size()
    near = [lr for lr in counts.index if np.isclose(lr, default_lr(reg), rtol=1e-9, atol=0)]
    lr = near[0] if near else sorted(counts.index, key=lambda x: (-counts[x], x))[0]
    return float(lr), bool(near), [float(x) for x in sorted(counts.index) if x != lr]


def r_norm_by_n(ratios: pd.DataFrame) -> pd.DataFrame:
    """How the effect of explicit regularization grows with N: r_norm (eq. 16) mean, std and datasets per
    regularizer, setting without N and learning rate (ratios' 'table') and N, for settings trained at two or more N;
    ratios is table2_ratios(df, lambdas) at fixed lambdas (at the ladder's edge the lambda may differ between the N).
    Each row holds one learning rate ('lr'; _one_rate picks it where several were trained at that N, listing the
    others in 'lr_left_out') and says whether it is the paper's for that regularizer ('paper_lr')."""
    if not len(ratios):
        return pd.DataFrame()
    rows = []
    for (table, reg, lam), g in ratios.groupby(["table", "regularizer", "lam"], sort=False):
        if g["n_train"].nunique() < 2:
            continue
        for n, h in g.groupby("n_train", sort=True):
            lr, paper_lr, left = _one_rate(h, reg)
            h = h[h["lr"] == lr]
            rows.append({"table": table, "regularizer": reg, "measure": h["measure"].iloc[0], "lam": lam,
                         "n_train": int(n), "lr": lr, "paper_lr": paper_lr,
                         "lr_left_out": ", ".join(f"{x:g}" for x in left), "r_norm_mean": h["r"].mean(),
                         "r_norm_std": h["r"].std(ddof=0) if len(h) > 1 else np.nan, "datasets": len(h),
                         "unreg_mean": h["unregularized"].mean(), "reg_mean": h["regularized"].mean()})
    return pd.DataFrame(rows)


def by_size(df: pd.DataFrame, columns) -> pd.DataFrame:
    """Mean and std over converged unregularized models of each column, per setting and training size."""
    df = complete(df)
    base = df[(df["regularizer"] == "none") & (df["status"] == "converged")]
    if not len(base) or base["n_train"].nunique() < 2:
        return pd.DataFrame()
    cols = [c for c in columns if c in base]
    sizes = base.groupby(SETTING)["n_train"].transform("nunique")
    base = base[sizes >= 2]                     # settings trained at a single N have no curve
    g = base.groupby(SETTING + ["n_train"])[cols].agg(["mean", "std", "count"])
    g.columns = [f"{a}_{b}" for a, b in g.columns]
    return g.reset_index()


# Table 1's measures defined at every depth (PN in WP's place): the learning-rate sweep and the depth table.
_ANY_DEPTH_TAU = registry.keys(table1=True, depth=registry.ANY_DEPTH)
# Columns of the learning-rate sweep (parameter-space measures next to the smoothness measures).
SWEEP = {**{k: registry.BY_KEY[k].label for k in registry.view(registry.SWEEP)}, "loss_test": "test loss"}
SETTING_NO_LR = [c for c in SETTING if c not in ("lr", "max_epochs")]


def by_lr(df: pd.DataFrame) -> pd.DataFrame:
    """Unregularized models of settings trained at several learning rates: per (setting, N, lr) the model
    counts by status and the mean and std over converged models of each SWEEP column present."""
    df = complete(df)
    base = df[df["regularizer"] == "none"] if len(df) else df
    if not len(base) or base["lr"].nunique() < 2:
        return pd.DataFrame()
    key = SETTING_NO_LR + ["n_train"]
    base = base[base.groupby(key)["lr"].transform("nunique") >= 2]
    if not len(base):   # several rates overall, but one per setting (e.g. sgd at 0.01 and adam at 1e-3)
        return pd.DataFrame()
    cols = [c for c in SWEEP if c in base and base[c].notna().any()]
    rows = []
    for keys, g in base.groupby(key + ["lr"], sort=True):
        row = dict(zip(key + ["lr"], keys))
        row["max_epochs"] = int(g["max_epochs"].max())
        row["models"] = len(g)
        for s in ("converged", "not_converged", "diverged"):
            row[s] = int((g["status"] == s).sum())
        # all models, converged or not: shows where training stalled (e.g. collapsed to a constant, loss ~1)
        row["final_loss_median"] = float(g["loss_epoch"].median()) if "loss_epoch" in g else np.nan
        conv = g[g["status"] == "converged"]
        for c in cols:
            row[f"{c}_mean"] = float(conv[c].mean()) if len(conv) else np.nan
            row[f"{c}_std"] = float(conv[c].std()) if len(conv) > 1 else np.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    out["two_over_lr"] = 2.0 / out["lr"]
    return out


# -- depth ------------------------------------------------------------------------------------------
DEPTH_MEASURES = {k: registry.depth_label(registry.BY_KEY[k]) for k in _ANY_DEPTH_TAU}
SETTING_NO_HIDDEN = [c for c in SETTING if c != "hidden"]


def by_depth(taus: pd.DataFrame) -> pd.DataFrame:
    """Table 1 across architectures: for settings trained with several hidden-layer shapes, the mean and std
    over (pair, seed) of Kendall's tau(N, measure) per architecture; taus is kendall_taus(df)."""
    if not len(taus) or "hidden" not in taus or taus["hidden"].nunique() < 2:
        return pd.DataFrame()
    rows = []
    for keys, g in taus.groupby(SETTING_NO_HIDDEN, sort=True):
        if g["hidden"].nunique() < 2:
            continue
        for hidden, h in g.groupby("hidden", sort=False):
            for m, short in DEPTH_MEASURES.items():
                vals = h[m].dropna() if m in h else h["n_models"][:0]
                rows.append({**dict(zip(SETTING_NO_HIDDEN, keys)), "hidden": hidden,
                             "depth": len(str(hidden).split("-")), "measure": short, "tau_mean": vals.mean(),
                             "tau_std": vals.std(ddof=0) if len(vals) > 1 else np.nan, "datasets": len(vals)})
    out = pd.DataFrame(rows)
    if not len(out):
        return out
    return out.sort_values(SETTING_NO_HIDDEN + ["depth", "hidden"], kind="stable").reset_index(drop=True)
