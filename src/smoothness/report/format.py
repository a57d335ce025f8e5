"""The report's tables: numbers formatted for reading, rendered as Markdown and as HTML."""
from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd

from smoothness.analysis import flatness, optimality, series, tables, verdict
from smoothness.measures import registry
from smoothness.runtime.values import counted


def fmt(v, digits=3) -> str:
    """A table cell: '–' for None or NaN, integers as they are, floats to `digits` significant places."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(v)
    return f"{v:.{digits}g}" if abs(v) < 1e-2 and v != 0 else f"{v:.{digits}f}".rstrip("0").rstrip(".") or "0"


def _pm(m, s) -> str:
    """Mean ± std; a std at rounding level (e.g. of taus that are all 1 up to the last bit) is shown as 0."""
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return fmt(m)
    if fmt(m) != "–" and abs(s) <= 1e-12 * max(1.0, abs(m)):
        s = 0
    return f"{fmt(m)} ± {fmt(s, 2)}"


class Table:
    """Headers and rows of strings, rendered as Markdown or HTML."""

    def __init__(self, title: str, headers: list[str], rows: list[list[str]], note: str = ""):
        self.title, self.headers, self.rows, self.note = title, headers, rows, note

    def markdown(self) -> str:
        """The table as Markdown, with its title and note."""
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.headers) + " |",
                 "|" + "|".join("---" for _ in self.headers) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines + (["", self.note] if self.note else [])) + "\n"

    def html(self) -> str:
        """The table as HTML, with its title and note."""
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.rows)
        note = f"<p class='note'>{html.escape(self.note)}</p>" if self.note else ""
        return (f"<h3>{html.escape(self.title)}</h3><table><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>{note}")


def table1_tables(t1: pd.DataFrame) -> list[Table]:
    """Table 1 (Kendall's tau per measure, ours beside the paper's), one table per setting."""
    out = []
    for setting, g in t1.groupby("setting", sort=False):
        rows = [["Kendall's τ (ours)"] + [_pm(r.tau_mean, r.tau_std) for r in g.itertuples()],
                ["Kendall's τ (paper)"] + [_pm(r.paper_tau_mean, r.paper_tau_std) for r in g.itertuples()]]
        r0 = g.iloc[0]
        note = (f"Ours: mean ± std over {tables.datasets_words(int(r0.datasets), r0.get('classes'))}; "
                f"{int(r0.converged)} of "
                f"{int(r0.models)} unregularized models converged, {int(r0.excluded)} excluded (not converged or "
                f"diverged). Paper: 45 MNIST-binary pairs × 3 seeds, N = 64…8192. Setting: {setting}.")
        out.append(Table("Table 1: monotonicity, Kendall's τ between training size N and each measure",
                         ["Smoothness measure"] + list(g["measure"]), rows, note))
    return out


def _lam_cell(c) -> str:
    """The chosen lambda with where the edge lies: below the next lambda tried, or above the ladder."""
    if c.lam is None or pd.isna(c.lam):
        return f"none ({verdict.NO_BASELINE if getattr(c, 'baselines_converged', None) == 0 else verdict.NO_LAMBDA})"
    if getattr(c, "ladder_short", False):
        return f"{fmt(c.lam)} (top of the ladder: the edge lies higher)"
    above = getattr(c, "lam_above", None)
    return f"{fmt(c.lam)} (< {fmt(above)})" if above is not None and not pd.isna(above) else fmt(c.lam)


def table2_tables(t2: pd.DataFrame) -> list[Table]:
    """One table per training setting and N, one column per regularizer (paper order), as the paper's Table 2."""
    out = []
    order = {m.short: i for i, m in enumerate(registry.REGISTRY)}
    for setting, g in t2.groupby("table", sort=False):
        cols = sorted(g.itertuples(), key=lambda c: (order.get(c.measure, 9), c.lr))
        fixed = getattr(cols[0], "rule", "edge") == "fixed"
        lam = ([f"{fmt(c.lam)}: {c.converged_at_lam}/{c.models_at_lam} converged" for c in cols] if fixed
               else [_lam_cell(c) for c in cols])
        rows = [["Regularizer"] + [c.regularizer for c in cols],
                ["Learning rate, epoch cap"] + [f"{fmt(c.lr)}, {c.max_epochs}" for c in cols],
                ["Fixed λ" if fixed else "Largest λ still converging"] + lam,
                ["Unregularized mean μ_unreg (ours / paper)"] + [f"{fmt(c.unreg_mean)} / {fmt(c.paper_unreg_mean)}"
                                                                 for c in cols],
                ["Regularized mean μ_reg (ours / paper)"] + [f"{fmt(c.reg_mean)} / {fmt(c.paper_reg_mean)}"
                                                             for c in cols],
                ["Lower bound l_S (ours / paper)"] + [f"{fmt(c.lower_bound)} / {fmt(c.paper_lower_bound)}"
                                                      for c in cols],
                ["r_norm (ours)"] + [_pm(c.r_norm_mean, c.r_norm_std) for c in cols],
                ["r_norm (paper)"] + [_pm(c.paper_r_norm_mean, c.paper_r_norm_std) for c in cols],
                ["Datasets in r_norm"] + [str(c.datasets) for c in cols],
                ["Converged per λ"] + [c.converged_by_lambda for c in cols]]
        means = ("μ_unreg, μ_reg and r_norm (eq. 16) are over the same datasets: those where both the "
                 "unregularized model (λ = 0, the same learning rate, N and seeds) and the model at the λ shown "
                 "converged (with none, μ_unreg is over all converged λ = 0 models). ")
        rule = ("The λ is fixed by the grid (table2_lambdas; the paper's values are those of its Table 2), whether or "
                "not its models converged: the row shows how many did. " if fixed else
                "The chosen λ is the largest at which at least half of the models reached the loss threshold within "
                "the epoch cap; in brackets the next λ tried, where fewer did. A grid with `ladder: staged` (the "
                "default) does not train the λ above that one, so the list ends there. ")
        out.append(Table("Table 2 at fixed λ" if fixed else "Table 2: explicit regularization",
                         ["Smoothness measure"] + [c.measure for c in cols], rows,
                         means + rule + f"Setting: {setting}."))
    return out


def verdict_tables(v: pd.DataFrame) -> list[Table]:
    """The answer first: per task (data, architecture, loss), one row per measure with tau, r_norm, our reading and
    the paper's."""
    out = []
    for task, g in v.groupby("task", sort=False):
        def tau(r):
            behind = f" ({counted(r.tau_datasets, 'dataset')}, N ≤ {r.n_max})" if r.tau_datasets else ""
            return f"{_pm(r.tau, r.tau_std)} / {fmt(r.paper_tau)}" + behind

        def ratio(r):
            behind = (f" ({counted(r.r_datasets, 'dataset')}, λ {fmt(r.lam)}, N {r.n_train_reg})" if r.r_datasets
                      else "")
            return f"{_pm(r.r_norm, r.r_norm_std)} / {fmt(r.paper_r_norm)}" + behind

        rows = [[r.measure, tau(r), ratio(r), r.reading, r.paper_reading, r.why] for r in g.itertuples()]
        note = (f"Reading (module smoothness.analysis.verdict): SGD does not optimize a measure if "
                f"τ ≤ {verdict.TAU_NOT_MONOTONE:g} "
                f"or r_norm ≤ {verdict.R_REDUCIBLE:g}; the data are consistent with SGD optimizing it if τ ≥ "
                f"{verdict.TAU_MONOTONE:g} and r_norm ≥ {verdict.R_NOT_REDUCIBLE:g} with a λ ladder that reached a λ "
                f"too large "
                f"to interpolate; anything else, or too little data (fewer than {verdict.MIN_DATASETS} datasets or "
                f"{verdict.MIN_SIZES} sizes), is inconclusive. The same rules on the paper's values give the paper's "
                "reading (right-hand column).")
        out.append(Table(f"Verdict: does SGD optimize each measure? ({task})",
                         ["Measure", "Kendall's τ(N, S) ours / paper", "r_norm ours / paper", "Our data",
                          "Paper's data", "Why"], rows, note))
    return out


def status_table(counts: pd.DataFrame) -> Table:
    """Models per regularizer, lambda, lr and N by status."""
    rows = [[r.regularizer, fmt(r.lam), fmt(r.lr), str(r.n_train), str(r.converged), str(r.not_converged),
             str(r.diverged)] for r in counts.itertuples()]
    return Table("Models by status", ["regularizer", "λ", "lr", "N", "converged", "not converged", "diverged"],
                 rows, "Not converged (epoch cap reached) and diverged (non-finite loss) models are excluded from "
                       "the tables and figures.")


def sampling_tables(err: pd.DataFrame) -> list[Table]:
    """The relative standard errors of the estimated measures (analysis.sampling_error)."""
    rows = [[r.measure, str(r.models), f"{100 * r.rel_se_median:.2f}%", f"{100 * r.rel_se_p90:.2f}%",
             f"{100 * r.rel_se_max:.2f}%"] for r in err.itertuples()]
    return [Table("Sampling error of the estimated measures", ["measure", "models", "median se/value",
                                                              "90th percentile", "largest"], rows,
                  "Standard errors over the points (GN, GN²) and over the segments (FPL, GPL), and over the probe "
                  "vectors (tr H), relative to each model's value. Differences between models smaller than a few "
                  "standard errors are within the sampling noise of the estimates.")]


# -- figures ----------------------------------------------------------------------------------------
def lr_sweep_tables(sweep: pd.DataFrame) -> list[Table]:
    """One table per setting and N: a row per learning rate."""
    cols = [c for c in series.SWEEP if f"{c}_mean" in sweep]
    tabs = []
    for keys, g in sweep.groupby(series.SETTING_NO_LR + ["n_train"], sort=True):
        label = tables.setting_label({**dict(zip(series.SETTING_NO_LR, keys)), "lr": 0, "max_epochs": 0}, with_lr=False)
        rows = [[f"{r['lr']:g}", f"{r['converged']}/{r['models']}", str(r["diverged"]), fmt(r["final_loss_median"]),
                 fmt(r["two_over_lr"])]
                + [_pm(r[f"{c}_mean"], r[f"{c}_std"]) for c in cols] for _, r in g.sort_values("lr").iterrows()]
        tabs.append(Table(f"Learning-rate sweep: {label}, N = {keys[-1]}",
                          ["lr", "converged", "diverged", "final loss (median)", "2/lr"]
                          + [series.SWEEP[c] for c in cols],
                          rows, "Means ± std over converged models (datasets and seeds); the final loss is the last "
                          "epoch's training loss, median over all models. Sharpness is the top eigenvalue of the "
                          "training-loss Hessian; full-batch GD is stable only below 2/lr."))
    return tabs


def depth_tables(bd: pd.DataFrame) -> list[Table]:
    """One table per setting: a row per measure, a column per architecture (Kendall's tau(N, measure))."""
    tabs = []
    for keys, g in bd.groupby(series.SETTING_NO_HIDDEN, sort=True):
        archs = list(dict.fromkeys(g["hidden"]))
        rows = []
        for m in series.DEPTH_MEASURES.values():
            cell = {r["hidden"]: (_pm(r["tau_mean"], r["tau_std"]) + f" ({r['datasets']})")
                    for _, r in g[g["measure"] == m].iterrows()}
            rows.append([m] + [cell.get(a, "–") for a in archs])
        label = tables.setting_label({**dict(zip(series.SETTING_NO_HIDDEN, keys)), "hidden": "*"})
        tabs.append(Table(f"Table 1 by depth: {label}", ["Smoothness measure"] + [f"hidden {a}" for a in archs],
                          rows, "Kendall's τ between N and each measure, mean ± std over (pair, seed) with the "
                                "number of those in brackets; converged unregularized models only."))
    return tabs


def by_size_tables(size: pd.DataFrame, shown: dict[str, str]) -> list[Table]:
    """The curves behind Table 1 as numbers: per setting, one row per N with the mean ± std of each measure
    over the converged unregularized models (size: analysis.by_size; shown: measure -> short name)."""
    out = []
    cols = [m for m in shown if f"{m}_mean" in size] + [m for m in ("loss_test",) if f"{m}_mean" in size]
    names = {**shown, "loss_test": "test loss"}
    for keys, g in size.groupby(tables.SETTING, sort=True):
        rows = [[str(int(r["n_train"])), str(int(r[f"{cols[0]}_count"]))]
                + [_pm(r[f"{m}_mean"], r[f"{m}_std"]) for m in cols] for _, r in g.iterrows()]
        out.append(Table("Measures by training size", ["N", "models"] + [names[m] for m in cols], rows,
                         "Mean ± std over the converged unregularized models of each N (the curves of "
                         f"measures_vs_n.png). Setting: {tables.setting_label(dict(zip(tables.SETTING, keys)))}."))
    return out


def r_norm_by_n_tables(rbn: pd.DataFrame) -> list[Table]:
    """How the effect grows with N (analysis.r_norm_by_n): per setting, a row per N, a column per measure."""
    out = []
    order = {m.short: i for i, m in enumerate(registry.REGISTRY)}
    for table, g in rbn.groupby("table", sort=False):
        cols = sorted({(r.measure, r.lam) for r in g.itertuples()}, key=lambda c: (order.get(c[0], 9), c[1]))
        mixed = {c for c, s in g.groupby(["measure", "lam"])["lr"] if s.nunique() > 1}   # rates differ between N
        rows = []
        for n, h in g.groupby("n_train", sort=True):
            cell = {(r.measure, r.lam): f"{_pm(r.r_norm_mean, r.r_norm_std)} ({r.datasets}"
                    + (f"; lr {fmt(r.lr)})" if (r.measure, r.lam) in mixed else ")") for r in h.itertuples()}
            rows.append([str(int(n))] + [cell.get(c, "–") for c in cols])
        rates = (" Where a column's learning rate differs between N, each cell names its own (open markers in "
                 "r_norm_vs_n.png: a rate other than the paper's for that regularizer)." if mixed else "")
        left = [f"{r.measure} at N {int(r.n_train)}: lr {r.lr_left_out}" for r in g.itertuples() if r.lr_left_out]
        if left:
            rates += (" Each cell is at one rate, the paper's where it was trained; left out: "
                      + "; ".join(left) + ".")
        out.append(Table("r_norm against N at fixed λ", ["N"] + [f"{m} (λ {fmt(lam)})" for m, lam in cols], rows,
                         "r_norm (eq. 16), mean ± std over the datasets where both the baseline and the regularized "
                         "model converged (their number in brackets), at the same λ for every N: how the effect of "
                         f"explicit regularization changes with the training size.{rates} Setting: {table}."))
    return out


# -- beyond the paper: optimality in one dimension, optimizers compared ------------------------------
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
                         f"{int(r['converged'])}/{int(r['models'])}"] + [cell(r, m) for m in optimality.MEASURES])
        tabs.append(Table(f"Optimality ratio S(f_SGD) / S_min on {data}",
                          ["training", "α", "lr", "N", "converged"]
                          + [registry.get(m).short for m in optimality.MEASURES], rows,
                          "Mean (min–max) over the converged models (seeds; – where none converged) of the exact "
                          "measure of the trained net divided by the smallest value of any function through the net's "
                          "values at its training inputs; 1 is the smoothest such function. S_min: closed forms for GN "
                          "and FPL "
                          "(infima, approached by ever steeper ramps) and WP; for GPL " + gpl_note(part["gpl_bracket"])
                          + " (docs/oned.md)."))
    return tabs


def gpl_note(bracket: pd.Series) -> str:
    """How GPL's S_min was found, from the widest relative bracket (1 - lower / upper) among the table's rows."""
    b = bracket.dropna()
    if not len(b):
        return ("a linear program on a grid of 4,000 cells, an upper bound of the infimum (a store from before the "
                "bracket)")
    if b.max() <= 1e-12:
        return "the linear spline, exact (w is concave over the training inputs)"
    return (f"the upper end of a bracket from linear programs, at most {100 * b.max():.2g}% wide, so GPL's ratios "
            "could be up to that much higher")


def edge_tables(t: pd.DataFrame) -> list[Table]:
    """The edge table as one Markdown/HTML table."""
    if not len(t):
        return []
    rows = []
    for _, r in t.iterrows():
        if r["lam"] is None or pd.isna(r["lam"]):
            edge = "none passed"
        else:
            edge = fmt(r["lam"]) + (" (ladder too short)" if r["ladder_short"]
                                    else f" (fails at {fmt(r['lam_above'])})")
        rows.append([registry.get(r["regularizer"]).short, fmt(r["alpha"]), fmt(r["lr"]), str(int(r["n_train"])), edge]
                    + [f"{fmt(r[m + '_sgd'])} → {fmt(r[m + '_reg'])}" for m in optimality.MEASURES])
    return [Table("Optimality ratio without and with explicit regularization at the ladder's edge",
                  ["regularizer", "α", "lr", "N", "largest λ passing"]
                  + [registry.get(m).short for m in optimality.MEASURES],
                  rows, "Mean ratio S(f_SGD) / S_min over the converged models without regularization (λ = 0, the "
                        "same seeds) → at the largest λ at which at least half of the models reach the loss "
                        "threshold (the paper's rule for Table 2). A ladder is too short when no rung above that λ "
                        "failed, so the true edge is higher. Models per rung: optimality.csv and the Table 2 section.")]


def optimizer_tables(t: pd.DataFrame) -> list[Table]:
    """One table per setting and N: a row per optimizer, each cell the mean and, in brackets, the paired ratio
    to SGD."""
    cols = [c for c in flatness.QUANTITIES if f"{c}_mean" in t]
    tabs = []
    for keys, g in t.groupby(flatness.KEY, sort=True):
        setting = dict(zip(flatness.KEY, keys))
        label = tables.setting_label({**setting, "optimizer": "sgd"})
        rows = []
        for _, r in g.iterrows():
            name = r["optimizer"] + (f" ρ={fmt(r['rho'])}" if r["optimizer"] == "sam" else "")
            cells = [fmt(r[f"{c}_mean"]) + ("" if r["optimizer"] == flatness.BASELINE or pd.isna(r[f"{c}_ratio"])
                                            else f" (×{fmt(r[f'{c}_ratio'])})") for c in cols]
            rows.append([name, f"{r['converged']}/{r['models']}", str(r["paired"])] + cells)
        tabs.append(Table(f"Optimizers compared: {label}, N = {setting['n_train']}",
                          ["optimizer", "converged", "paired with SGD"] + [flatness.QUANTITIES[c] for c in cols], rows,
                          "Means over converged models; in brackets the mean over (pair, seed) of the model's value "
                          "divided by SGD's on the same training set and initialization, where both converged. "
                          "Sharpness is the top eigenvalue of the training-loss Hessian, tr H its trace; LipLB and "
                          "LipUB bracket sup ‖∇f‖."))
    return tabs
