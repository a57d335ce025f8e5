"""The optimality experiment in one dimension (docs/oned.md): how far SGD's interpolant is from the smoothest one.

For every converged 1-h-1 net trained on a 1-D task, the optimality ratio of a measure S is S(f_SGD) / S_min, with
S(f_SGD) the exact value from the net's kinks and S_min the smallest value over all functions that pass through the
net's own values at its training inputs (both in the record, linetasks.py). A converged net interpolates its targets
only up to the loss threshold, and the second-order minima react strongly to residuals at close inputs; against its
own values the ratio is >= 1 by construction and measures only how the net behaves between the points. A ratio of 1
means SGD found the smoothest interpolant in that sense. ratio_frame also gives the ratio against the targets' S_min.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from smoothness.analysis import tables as analysis
from smoothness.data import lines as linetasks
from smoothness.measures import oned
from smoothness.measures import registry
from smoothness.report.format import Table, fmt

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
    line = df[df["exact_gradient_norm"].notna() | df["data"].map(linetasks.is_line)]
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
    return out[SETTING + ["n_train", "models", "converged"] + [c for c in out if c.startswith(MEASURES)] + ["gpl_bracket"]]


def ratio_tables(t: pd.DataFrame) -> list[Table]:
    """The ratio table as one Markdown/HTML table per task."""
    def cell(r, m):
        if not r["converged"]:
            return "–"
        spread = f" ({fmt(r[m + '_min'])}–{fmt(r[m + '_max'])})" if r["converged"] > 1 else ""
        return fmt(r[m + "_mean"]) + spread

    tabs = []
    t = t.assign(_plain=t["regularizer"] != "none").sort_values(["_plain", "regularizer", "lam"], kind="stable")
    for data, part in t.groupby("data", sort=False):
        rows = []
        for _, r in part.iterrows():
            reg = "SGD" if r["regularizer"] == "none" else f"{registry.get(r['regularizer']).short} λ={fmt(r['lam'])}"
            rows.append([reg, fmt(r["alpha"]), fmt(r["lr"]), str(int(r["n_train"])),
                         f"{int(r['converged'])}/{int(r['models'])}"] + [cell(r, m) for m in MEASURES])
        tabs.append(Table(f"Optimality ratio S(f_SGD) / S_min on {data}",
                          ["training", "α", "lr", "N", "converged"]
                          + [registry.get(m).short for m in MEASURES], rows,
                          "Mean (min–max) over the converged models (seeds; – where none converged) of the exact measure "
                          "of the trained net divided by the smallest value of any function through the net's values at "
                          "its training inputs; 1 is the smoothest such function. S_min: closed forms for GN and FPL "
                          "(infima, approached by ever steeper ramps) and WP; for GPL " + _gpl_note(part["gpl_bracket"])
                          + " (docs/oned.md)."))
    return tabs


def _gpl_note(bracket: pd.Series) -> str:
    """How GPL's S_min was found, from the widest relative bracket (1 - lower / upper) among the table's rows."""
    b = bracket.dropna()
    if not len(b):
        return "a linear program on a grid of 4,000 cells, an upper bound of the infimum (a store from before the bracket)"
    if b.max() <= 1e-12:
        return "the linear spline, exact (w is concave over the training inputs)"
    return (f"the upper end of a bracket from linear programs, at most {100 * b.max():.2g}% wide, so GPL's ratios "
            "could be up to that much higher")


def edge_table(df: pd.DataFrame) -> pd.DataFrame:
    """How far explicit regularization moves the ratios: per regularizer ladder on a 1-D task (setting and N), the
    largest λ at which at least half of the models reach the threshold (the paper's rule, analysis), whether a
    failing rung above it locates that edge, and each measure's mean ratio without regularization (the same seeds)
    and at that λ."""
    line = df[df["data"].map(linetasks.is_line)] if len(df) else df
    if not len(line) or "exact_gradient_norm" not in line:
        return pd.DataFrame()
    rows = []
    for r in analysis._regularized_groups(line):
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


def edge_tables(t: pd.DataFrame) -> list[Table]:
    """The edge table as one Markdown/HTML table."""
    if not len(t):
        return []
    rows = []
    for _, r in t.iterrows():
        if r["lam"] is None or pd.isna(r["lam"]):
            edge = "none passed"
        else:
            edge = fmt(r["lam"]) + (" (ladder too short)" if r["ladder_short"] else f" (fails at {fmt(r['lam_above'])})")
        rows.append([registry.get(r["regularizer"]).short, fmt(r["alpha"]), fmt(r["lr"]), str(int(r["n_train"])), edge]
                    + [f"{fmt(r[m + '_sgd'])} → {fmt(r[m + '_reg'])}" for m in MEASURES])
    return [Table("Optimality ratio without and with explicit regularization at the ladder's edge",
                  ["regularizer", "α", "lr", "N", "largest λ passing"] + [registry.get(m).short for m in MEASURES],
                  rows, "Mean ratio S(f_SGD) / S_min over the converged models without regularization (λ = 0, the "
                        "same seeds) → at the largest λ at which at least half of the models reach the loss threshold "
                        "(the paper's rule for Table 2). A ladder is too short when no rung above that λ failed, so the "
                        "true edge is higher. Models per rung: optimality.csv and the Table 2 section.")]


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


def interpolant_figure(rows: pd.DataFrame, params: dict, path: Path) -> bool:
    """For each example model: its training set, SGD's function and the smoothest interpolant of each measure
    (the linear program's, on the default grid). params: key -> MLPStack of one. False if nothing to draw."""
    rows = rows[rows["key"].isin(params)] if len(rows) else rows
    if not len(rows):
        return False
    from smoothness.report.document import _plt
    plt = _plt()
    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 4), squeeze=False)
    for ax, (_, r) in zip(axes[0], rows.iterrows()):
        task = linetasks.line_task(r["data"])
        idx = task.subset(int(r["n_train"]), int(r["seed"]))
        x, y = task.pool_x[idx, 0].double().numpy(), task.pool_y[idx].double().numpy()
        span = x.max() - x.min()
        t = np.linspace(x.min() - 0.25 * span, x.max() + 0.25 * span, 801)
        f = oned.net_function(params[r["key"]])
        ax.plot(t, f(t), color="black", lw=2, label="SGD")
        for m in MEASURES:
            _, g = oned.smallest_on_grid(m, x, y, task.density)
            ax.plot(t, g(t), lw=1, label=f"smallest {registry.get(m).short}")
        ax.scatter(x, y, color="black", zorder=5, s=14, label="training set")
        ax.set_title(f"{r['data']}, N = {int(r['n_train'])}, seed {int(r['seed'])}")
        ax.set_xlabel("t")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
