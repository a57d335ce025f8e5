"""The optimality experiment in one dimension (docs/oned.md): how far SGD's interpolant is from the smoothest one.

For every converged 1-h-1 net trained on a 1-D task, the optimality ratio of a measure S is S(f_SGD) / S_min, with
S(f_SGD) the exact value from the net's kinks and S_min the smallest value over all functions that pass through the
net's own values at its training inputs (both in the record, lines.py). A converged net interpolates its targets
only up to the loss threshold, and the second-order minima react strongly to residuals at close inputs; against its
own values the ratio is >= 1 by construction and measures only how the net behaves between the points. A ratio of 1
means SGD found the smoothest interpolant in that sense. ratio_frame also gives the ratio against the targets' S_min.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from smoothness.analysis import tables
from smoothness.data import lines
from smoothness.measures import oned

MEASURES = oned.MEASURES_1D
SETTING = ["data", "regularizer", "lam", "alpha", "lr"]


def ratio_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The converged models of 1-D tasks with exact measures, one ratio_<measure> column per measure."""
    if not len(df) or "exact_gradient_norm" not in df:
        return pd.DataFrame()
    d = df[(df["status"] == "converged") & df["exact_gradient_norm"].notna()].copy()
    for m in MEASURES:
        d["ratio_" + m] = d[oned.EXACT[m]] / d[oned.THROUGH[m]]
        d["ratio_targets_" + m] = d[oned.EXACT[m]] / d[oned.SMALLEST[m]]
    # GPL's S_min is bracketed [lower, upper] (oned.smallest_gradient_path_length): the ratio could be this much higher
    lower = d["min_through_" + oned.LOWER] if "min_through_" + oned.LOWER in d else np.nan
    d["gpl_bracket"] = 1 - lower / d[oned.THROUGH["gradient_path_length"]]
    return d


def ratio_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per setting (data, regularizer, λ, α, lr) and N: models, converged models, and the mean, std, min and max
    of each measure's optimality ratio over the converged ones."""
    if not len(df) or "exact_gradient_norm" not in df:
        return pd.DataFrame()
    line = df[df["exact_gradient_norm"].notna() | df["data"].map(lines.is_line)]
    counts = line.groupby(SETTING + ["n_train"]).size().rename("models")
    if not len(counts):
        return pd.DataFrame()
    d = ratio_frame(line)
    g = d.groupby(SETTING + ["n_train"])
    cols = {"converged": g.size(), "gpl_bracket": g["gpl_bracket"].max()}
    for m in MEASURES:
        s = g["ratio_" + m]
        cols.update({f"{m}_mean": s.mean(), f"{m}_std": s.std(), f"{m}_min": s.min(), f"{m}_max": s.max()})
    out = counts.to_frame().join(pd.DataFrame(cols)).reset_index()   # settings where none converged stay, with 0
    out["converged"] = out["converged"].fillna(0).astype(int)
    ratios = [c for c in out if c.startswith(MEASURES)]
    return out[SETTING + ["n_train", "models", "converged"] + ratios + ["gpl_bracket"]]


def edge_table(df: pd.DataFrame) -> pd.DataFrame:
    """How far explicit regularization moves the ratios: per regularizer ladder on a 1-D task (setting and N), the
    largest λ at which at least half of the models reach the threshold (the paper's rule, analysis), whether a
    failing rung above it locates that edge, and each measure's mean ratio without regularization (the same seeds)
    and at that λ."""
    line = df[df["data"].map(lines.is_line)] if len(df) else df
    if not len(line) or "exact_gradient_norm" not in line:
        return pd.DataFrame()
    rows = []
    for r in tables.regularized_groups(line):
        base, at = ratio_frame(r["base"]), ratio_frame(r["at"])
        row = {"data": r["data"], "regularizer": r["regularizer"], "alpha": float(r["base"]["alpha"].iloc[0])
               if len(r["base"]) else np.nan, "lr": r["lr"], "n_train": r["n_train"], "lam": r["lam"],
               "lam_above": r["lam_above"], "ladder_short": r["ladder_short"],
               "converged_by_lambda": ", ".join(f"{x:g}: {int(r['converged'].get(x, 0))}/{int(n)}"
                                                for x, n in r["totals"].items())}
        for m in MEASURES:
            row[f"{m}_sgd"] = base["ratio_" + m].mean() if len(base) else np.nan
            row[f"{m}_reg"] = at["ratio_" + m].mean() if len(at) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def examples(df: pd.DataFrame, most: int = 3) -> pd.DataFrame:
    """Up to `most` converged unregularized models to draw: the first seed, sizes spread over the N axis."""
    d = ratio_frame(df)
    if not len(d):
        return d
    d = d[d["regularizer"] == "none"]
    d = d[(d["alpha"] == d["alpha"].iloc[0]) & (d["lr"] == d["lr"].iloc[0]) & (d["seed"] == d["seed"].min())]
    sizes = sorted(d["n_train"].unique())
    pick = [sizes[int(round(i))] for i in np.linspace(0, len(sizes) - 1, min(most, len(sizes)))]
    return d[d["n_train"].isin(pick)].drop_duplicates("n_train").sort_values("n_train")
