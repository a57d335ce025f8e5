"""Every figure of the report, each a function of an analysis's DataFrame that writes one PNG (matplotlib, Agg)
and returns whether there was anything to draw."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from smoothness import paper
from smoothness.analysis import optimality, series, tables
from smoothness.data import lines
from smoothness.measures import oned, registry


def _horizontal() -> dict:
    """Horizontal boxes: `orientation` from Matplotlib 3.10 on (where `vert` is deprecated), `vert` before."""
    import matplotlib
    major, minor = (int(v) for v in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path: Path, dpi: int = 110) -> bool:
    """Lay the figure out, write it to path as PNG, free it; True (there was something to draw)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return True


def figure2(fig_data: list[dict], path: Path) -> bool:
    """Box plots of each regularized measure per λ (λ on the y axis, as in the paper's Figure 2)."""
    if not fig_data:
        return False
    plt = _plt()
    n = len(fig_data)
    ncol = min(n, 2)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.2 * ncol, 2.2 + 0.55 * max(len(d["values"]) for d in fig_data)
                                                  * nrow), squeeze=False)
    for ax, d in zip(axes.flat, fig_data):
        lams = list(d["values"])
        vals = [d["values"][lam] for lam in lams]
        pos = list(range(len(lams), 0, -1))
        present = [(v, p) for v, p in zip(vals, pos) if len(v)]
        if present:
            ax.boxplot([v for v, _ in present], positions=[p for _, p in present], widths=0.6, **_horizontal())
        labels = []
        for lam in lams:
            conv, tot = len(d["values"][lam]), int(d["totals"][lam])
            mark = " *" if d["chosen"] is not None and lam == d["chosen"] else ""
            labels.append(f"λ={lam:g}{mark}\n{conv}/{tot} conv.")
        ax.set_yticks(pos, labels, fontsize=8)
        ax.set_ylim(0.4, len(lams) + 0.6)
        ax.set_xlabel(d["measure"])
        ax.set_title(f"{d['regularizer']}, lr {d['lr']:g}, N = {d['n_train']}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Figure 2: each measure under its own regularizer (converged models; * = λ used in Table 2)",
                 fontsize=10)
    return _save(plt, fig, path)


def vs_n(size: pd.DataFrame, cols: dict, path: Path, title: str, logy=()) -> bool:
    """Mean ± std of each column against N, one line per setting; log y for the columns in logy."""
    if not len(size):
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(cols), figsize=(3.6 * len(cols), 3.3), squeeze=False)
    for ax, (col, name) in zip(axes[0], cols.items()):
        for setting, g in size.groupby(tables.SETTING, sort=True):
            g = g.sort_values("n_train")
            label = f"lr {setting[tables.SETTING.index('lr')]:g}, hidden {setting[tables.SETTING.index('hidden')]}"
            ax.errorbar(g["n_train"], g[f"{col}_mean"], yerr=g[f"{col}_std"].fillna(0), marker="o", ms=3,
                        capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ns = sorted(size["n_train"].unique())
        ax.set_xticks(ns, [str(n) for n in ns], fontsize=7)
        ax.minorticks_off()
        if col in logy:
            ax.set_yscale("log")
        ax.set_xlabel("training size N")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    if size.groupby(tables.SETTING).ngroups > 1:
        axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(plt, fig, path)


def paper_r_norm_points(rbn: pd.DataFrame) -> dict[tuple, tuple[float, float]]:
    """The paper's Table 2 r_norm (mean, std over its 45 MNIST tasks, at N = paper.N_TABLE2) for each line of an
    r_norm-against-N frame whose λ is the paper's for its regularizer, keyed by (table, measure, lam)."""
    out = {}
    for (table, reg, measure, lam), _ in rbn.groupby(["table", "regularizer", "measure", "lam"], sort=False):
        want = paper.LAMBDAS.get(reg)
        if want is not None and math.isclose(lam, want, rel_tol=1e-9):   # as tables.table2_ratios matches λ
            out[(table, measure, lam)] = paper.TABLE2[reg][3:5]
    return out


def r_norm_figure(rbn: pd.DataFrame, path: Path) -> bool:
    """r_norm against N at fixed λ, one line per measure (and setting), and as open markers the paper's r_norm at
    its N where the λ is the paper's; False when there is nothing to plot."""
    if not len(rbn):
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    several = rbn["table"].nunique() > 1
    papers = paper_r_norm_points(rbn)
    beside = {k: 1.08 + 0.04 * i for i, k in enumerate(papers)}   # the paper's markers just right of ours at its N
    for (table, measure, lam), g in rbn.groupby(["table", "measure", "lam"], sort=False):
        g = g.sort_values("n_train")
        label = f"{measure} (λ {lam:g})" + (f", {table}" if several else "")
        line = ax.errorbar(g["n_train"], g["r_norm_mean"], yerr=g["r_norm_std"].fillna(0), marker="o", ms=4,
                           capsize=3, label=label)
        other = g[~g["paper_lr"]]   # trained at a rate other than the paper's: an open marker over the filled one
        if len(other):
            ax.plot(other["n_train"], other["r_norm_mean"], marker="o", ms=7, mfc="white", ls="none",
                    color=line[0].get_color())
        if (table, measure, lam) in papers:
            mean, std = papers[(table, measure, lam)]
            ax.errorbar([paper.N_TABLE2 * beside[(table, measure, lam)]], [mean], yerr=[std], marker="s", ms=6,
                        mfc="none", capsize=3, ls="none", color=line[0].get_color(), alpha=0.8)
    if papers:
        ax.plot([], [], marker="s", mfc="none", ls="none", color="0.4",
                label=f"paper (MNIST, N = {paper.N_TABLE2:,}, ± std over its tasks)")
    if not rbn["paper_lr"].all():
        ax.plot([], [], marker="o", ms=7, mfc="white", ls="none", color="0.4",
                label="at a learning rate other than the paper's (r_norm_by_n.md)")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xscale("log")
    ns = sorted(set(rbn["n_train"].unique()) | ({paper.N_TABLE2} if papers else set()))
    ax.set_xticks(ns, [str(n) for n in ns], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("training size N")
    ax.set_ylabel("r_norm (1: regularization changed nothing)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Explicit regularization at fixed λ against N (mean ± std over datasets)", fontsize=10)
    return _save(plt, fig, path)


def lr_sweep_figure(sweep: pd.DataFrame, path: Path) -> bool:
    """The learning-rate sweep's figure (one panel per quantity) at path; False when there is nothing to plot."""
    cols = [c for c in series.SWEEP if f"{c}_mean" in sweep]
    if not len(sweep) or not cols:
        return False
    plt = _plt()
    ncol = min(len(cols), 4)
    nrow = math.ceil(len(cols) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.1 * nrow), squeeze=False)
    for ax, c in zip(axes.flat, cols):
        for keys, g in sweep.groupby(series.SETTING_NO_LR + ["n_train"], sort=True):
            g = g.sort_values("lr")
            ax.errorbar(g["lr"], g[f"{c}_mean"], yerr=g[f"{c}_std"].fillna(0), marker="o", ms=3, capsize=3,
                        label=f"hidden {keys[series.SETTING_NO_LR.index('hidden')]}, N = {keys[-1]}")
            if c == "sharpness":
                ax.plot(g["lr"], g["two_over_lr"], "k--", lw=0.8, label="2/lr")
        ax.set_xscale("log")
        if c == "loss_test" or (c in registry.BY_KEY and registry.BY_KEY[c].log_scale):
            ax.set_yscale("log")
        ax.set_xlabel("learning rate")
        ax.set_title(series.SWEEP[c], fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    for ax in list(axes.flat)[len(cols):]:
        ax.axis("off")
    fig.suptitle("Against the learning rate (mean ± std over converged unregularized models)", fontsize=10)
    return _save(plt, fig, path)


def depth_figure(bd: pd.DataFrame, path: Path) -> bool:
    """Kendall's tau per measure against the number of hidden layers at path; False when nothing to plot."""
    if not len(bd):
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for keys, g in bd.groupby(series.SETTING_NO_HIDDEN + ["measure"], sort=False):
        g = g.sort_values("depth")
        ax.errorbar(g["depth"], g["tau_mean"], yerr=g["tau_std"].fillna(0), marker="o", ms=4, capsize=3,
                    label=keys[-1])
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(sorted(bd["depth"].unique()))
    ax.set_xlabel("hidden layers")
    ax.set_ylabel("Kendall τ(N, measure)")
    ax.set_ylim(-1.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Table 1 by depth (negative: smoother with more data)", fontsize=10)
    return _save(plt, fig, path)


def interpolant_figure(rows: pd.DataFrame, params: dict, path: Path) -> bool:
    """For each example model: its training set, SGD's function and the smoothest interpolant of each measure
    (the linear program's, on the default grid). params: key -> MLPStack of one. False if nothing to draw."""
    rows = rows[rows["key"].isin(params)] if len(rows) else rows
    if not len(rows):
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 4), squeeze=False)
    for ax, (_, r) in zip(axes[0], rows.iterrows()):
        task = lines.line_task(r["data"])
        idx = task.subset(int(r["n_train"]), int(r["seed"]))
        x, y = task.pool_x[idx, 0].double().numpy(), task.pool_y[idx].double().numpy()
        span = x.max() - x.min()
        t = np.linspace(x.min() - 0.25 * span, x.max() + 0.25 * span, 801)
        f = oned.net_function(params[r["key"]])
        ax.plot(t, f(t), color="black", lw=2, label="SGD")
        for m in optimality.MEASURES:
            _, g = oned.smallest_on_grid(m, x, y, task.density)
            ax.plot(t, g(t), lw=1, label=f"smallest {registry.get(m).short}")
        ax.scatter(x, y, color="black", zorder=5, s=14, label="training set")
        ax.set_title(f"{r['data']}, N = {int(r['n_train'])}, seed {int(r['seed'])}")
        ax.set_xlabel("t")
    axes[0][0].legend(fontsize=8)
    return _save(plt, fig, path)


def density_labels(density, title: str = "Hessian eigenvalue density", loss: str | None = None,
                   points: int | None = None) -> tuple[str, str]:
    """(title, legend label) of the density figure: the title with the loss (its name, the first word of a
    description) and the number of points and parameters; the label with the runs and the kernel width sigma."""
    of = [f"{loss.split()[0]} loss" if loss else "", f"{points:,} points" if points else "",
          f"{density.dim:,} parameters"]
    return (f"{title}\n({', '.join(s for s in of if s)})",
            f"mean of {density.runs} runs, Gaussian kernel σ = {density.sigma():.3g}")


def density_figure(density, path: Path, title: str = "Hessian eigenvalue density", *, replace: bool = False,
                   loss: str | None = None, points: int | None = None) -> bool:
    """The eigenvalue density of stochastic Lanczos quadrature (measures.curvature.Density) on a symmetric log
    scale of density, with its ±1.96 standard-error band over the runs, written to path as PNG (whatever its
    name), labelled with the loss and the number of points when given, the parameters and the kernel width
    (density_labels). False, and nothing written, when the density is not finite (a model with non-finite
    parameters, an overflow). An existing file is replaced only with replace=True: otherwise FileExistsError. The
    PNG is made in memory and written at once; a write that fails (OSError) leaves no partial file."""
    if not (np.isfinite(density.nodes).all() and np.isfinite(density.weights).all()):
        return False
    plt = _plt()
    grid, dens, se = density.curve()
    head, label = density_labels(density, title, loss, points)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(grid, dens, color="C0", lw=1.2, label=label)
    if density.runs > 1:
        ax.fill_between(grid, np.clip(dens - 1.96 * se, 1e-12, None), dens + 1.96 * se, color="C0", alpha=0.25,
                        lw=0, label="±1.96 SE")
    ax.set_yscale("log")
    ax.set_ylim(max(float(dens.max()) * 1e-7, 1e-12), float(dens.max()) * 3)
    ax.set_xlabel("eigenvalue of the Hessian")
    ax.set_ylabel("density")
    ax.set_title(head, fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=130)
    plt.close(fig)
    _write_file(Path(path), png.getvalue(), replace)
    return True


def _write_file(path: Path, data: bytes, replace: bool) -> None:
    """data into path, created anew (FileExistsError if it exists) unless replace; no partial file on a failure."""
    with open(path, "wb" if replace else "xb") as f:
        try:
            f.write(data)
            f.flush()
        except BaseException:
            f.close()
            path.unlink(missing_ok=True)
            raise
