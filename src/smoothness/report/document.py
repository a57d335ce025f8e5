"""The report of a results store: Markdown tables, CSVs, PNG figures and one self-contained HTML page."""
from __future__ import annotations

import base64
import contextlib
import html
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from smoothness.analysis import tables as A
from smoothness.analysis import flatness
from smoothness.analysis import optimality
from smoothness.measures import registry
from smoothness.errors import StoreError
from smoothness.experiments.store import Store
from smoothness.report.format import (
    by_size_tables, depth_tables, lr_sweep_tables, r_norm_by_n_tables, status_table, table1_tables, table2_tables,
    verdict_tables)


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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _vs_n(size: pd.DataFrame, cols: dict, path: Path, title: str, logy=()) -> bool:
    """Mean ± std of each column against N, one line per setting; log y for the columns in logy."""
    if not len(size):
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(cols), figsize=(3.6 * len(cols), 3.3), squeeze=False)
    for ax, (col, name) in zip(axes[0], cols.items()):
        for setting, g in size.groupby(A.SETTING, sort=True):
            g = g.sort_values("n_train")
            label = f"lr {setting[A.SETTING.index('lr')]:g}, hidden {setting[A.SETTING.index('hidden')]}"
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
    if size.groupby(A.SETTING).ngroups > 1:
        axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def r_norm_figure(rbn: pd.DataFrame, path: Path) -> bool:
    """r_norm against N at fixed λ, one line per measure (and setting); False when there is nothing to plot."""
    if not len(rbn):
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    several = rbn["table"].nunique() > 1
    for (table, measure, lam), g in rbn.groupby(["table", "measure", "lam"], sort=False):
        g = g.sort_values("n_train")
        label = f"{measure} (λ {lam:g})" + (f", {table}" if several else "")
        ax.errorbar(g["n_train"], g["r_norm_mean"], yerr=g["r_norm_std"].fillna(0), marker="o", ms=4, capsize=3,
                    label=label)
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xscale("log")
    ns = sorted(rbn["n_train"].unique())
    ax.set_xticks(ns, [str(n) for n in ns], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("training size N")
    ax.set_ylabel("r_norm (1: regularization changed nothing)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Explicit regularization at fixed λ against N (mean ± std over datasets)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def lr_sweep_figure(sweep: pd.DataFrame, path: Path) -> bool:
    """The learning-rate sweep's figure (one panel per quantity) at path; False when there is nothing to plot."""
    cols = [c for c in A.SWEEP if f"{c}_mean" in sweep]
    if not len(sweep) or not cols:
        return False
    plt = _plt()
    ncol = min(len(cols), 4)
    nrow = math.ceil(len(cols) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.1 * nrow), squeeze=False)
    for ax, c in zip(axes.flat, cols):
        for keys, g in sweep.groupby(A.SETTING_NO_LR + ["n_train"], sort=True):
            g = g.sort_values("lr")
            ax.errorbar(g["lr"], g[f"{c}_mean"], yerr=g[f"{c}_std"].fillna(0), marker="o", ms=3, capsize=3,
                        label=f"hidden {keys[A.SETTING_NO_LR.index('hidden')]}, N = {keys[-1]}")
            if c == "sharpness":
                ax.plot(g["lr"], g["two_over_lr"], "k--", lw=0.8, label="2/lr")
        ax.set_xscale("log")
        if c in ("sharpness", "hessian_trace", "loss_test") or (c in registry.BY_KEY and registry.BY_KEY[c].log_scale):
            ax.set_yscale("log")
        ax.set_xlabel("learning rate")
        ax.set_title(A.SWEEP[c], fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    for ax in list(axes.flat)[len(cols):]:
        ax.axis("off")
    fig.suptitle("Against the learning rate (mean ± std over converged unregularized models)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def depth_figure(bd: pd.DataFrame, path: Path) -> bool:
    """Kendall's tau per measure against the number of hidden layers at path; False when nothing to plot."""
    if not len(bd):
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for keys, g in bd.groupby(A.SETTING_NO_HIDDEN + ["measure"], sort=False):
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- the report -------------------------------------------------------------------------------------
_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #bbb;padding:.25em .6em;font-size:.9em}
th{background:#eee}td:first-child{font-weight:600}img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
.note{font-size:.85em;color:#555;max-width:900px}code{background:#f4f4f4;padding:0 .2em}"""


def _combined(frames: list[pd.DataFrame]) -> tuple[pd.DataFrame, int]:
    """The stores' frames as one, each model (key) once, the first store's row kept; and how many were dropped."""
    frames = [f for f in frames if len(f)]
    if len(frames) <= 1:
        return (frames[0] if frames else pd.DataFrame()), 0
    df = pd.concat(frames, ignore_index=True)
    keep = ~df["key"].duplicated()
    return df[keep].reset_index(drop=True), int((~keep).sum())


def write_report(source, out_dir=None) -> dict:
    """Analyse a results store (a directory or .sqlite file), or several as one (a list: Table 1 from one grid and
    Table 2 from another, say), and write the report; returns what was written. With several stores the
    report goes to out_dir, or beside the first store.

    Files: verdict.md/csv, table1.md/csv, table1_taus.csv, measures_by_n.md/csv, table2.md/csv,
    table2_ratios.csv (with the grids' table2_lambdas also table2_fixed.csv, table2_fixed_ratios.csv and, over
    several N, r_norm_by_n.md/csv and r_norm_vs_n.png), status_counts.csv, runs.csv, figure2.png, measures_vs_n.png, test_loss_vs_n.png,
    report.md and a self-contained report.html; for grids with several learning rates also lr_sweep.md/csv
    and lr_sweep.png; with several architectures also depth.md/csv and depth.png; with several optimizers
    optimizers.md/csv (flatness.py); for 1-D tasks optimality.md/csv,
    optimality_edges.csv and interpolants.png. compute_content and render are the two halves.
    """
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    if not sources:
        raise StoreError("no results store to report on")
    frames, grids, paths, skipped, stores = [], [], [], [], []
    with contextlib.ExitStack() as stack:
        for src in sources:   # read-only: a store nobody may write can be reported on
            st = stack.enter_context(Store(src, create=False))
            stores.append(st)
            frames.append(st.frame())
            grids += [g for g in [st.meta("grid", {}) or {}, *(st.meta("merged", []) or [])] if g]
            paths.append(st.path)
            skipped += st.skipped
        versions = stores[0].meta("versions", {}) or {}
        df, dropped = _combined(frames)
        path = paths[0]
        c = compute_content(df, grids[0] if grids else {}, grids[1:], versions, path, skipped)
        if len(paths) > 1:   # several stores: one report over their models (a key held twice counts once)
            c.intro = c.intro.replace(f"models in {path}.", f"models in {len(paths)} stores: "
                                      + ", ".join(str(p) for p in paths) + "."
                                      + (f" {dropped} model(s) held by more than one store are counted once."
                                         if dropped else ""), 1)
        for k in c.examples["key"] if len(c.examples) else []:   # the 1-D models drawn (a store may hold no weights)
            for st in stores:
                try:
                    c.example_params[k] = st.params(k)
                    break
                except StoreError:
                    pass
    out = Path(out_dir) if out_dir else path.parent / "report"
    hint = "" if out_dir else "; write it elsewhere with --out DIR"
    if out.exists() and not out.is_dir():
        raise StoreError(f"cannot write the report to {out}: it is a file, not a directory{hint}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        return render(c, out)
    except OSError as e:
        why = e.strerror or str(e)
        if e.filename is not None and str(e.filename) != str(out):
            why += f": {e.filename}"
        raise StoreError(f"cannot write the report to {out} ({why}){hint}") from None


@dataclass
class ReportContent:
    """What a report says, computed from a store's table without writing anything (compute_content);
    render() turns it into files. Frames are empty where the store holds nothing for them."""
    title: str
    intro: str
    runs: pd.DataFrame                        # one row per model (Store.frame())
    counts: pd.DataFrame = field(default_factory=pd.DataFrame)    # models by status
    taus: pd.DataFrame = field(default_factory=pd.DataFrame)      # Kendall's tau per (setting, pair, seed)
    ratios: pd.DataFrame = field(default_factory=pd.DataFrame)    # r_norm per (regularizer, pair)
    table1: pd.DataFrame = field(default_factory=pd.DataFrame)
    table2: pd.DataFrame = field(default_factory=pd.DataFrame)
    ratios_fixed: pd.DataFrame = field(default_factory=pd.DataFrame)   # r per pair at the grids' table2_lambdas
    table2_fixed: pd.DataFrame = field(default_factory=pd.DataFrame)   # Table 2 at those fixed λ
    r_by_n: pd.DataFrame = field(default_factory=pd.DataFrame)         # r_norm against N at those λ
    verdict: pd.DataFrame = field(default_factory=pd.DataFrame)
    lr_sweep: pd.DataFrame = field(default_factory=pd.DataFrame)
    depth: pd.DataFrame = field(default_factory=pd.DataFrame)
    by_size: pd.DataFrame = field(default_factory=pd.DataFrame)   # the curves behind Table 1
    shown: dict = field(default_factory=dict)                     # {measure key: short} of the per-N views
    figure2: pd.DataFrame = field(default_factory=pd.DataFrame)
    optimality: pd.DataFrame = field(default_factory=pd.DataFrame)   # 1-D tasks: S(f_SGD) / S_min (optimality.py)
    optimality_edges: pd.DataFrame = field(default_factory=pd.DataFrame)   # ... at each λ ladder's edge
    optimizers: pd.DataFrame = field(default_factory=pd.DataFrame)   # SGD vs SAM etc. (flatness.py)
    examples: pd.DataFrame = field(default_factory=pd.DataFrame)     # 1-D models drawn beside their interpolants
    example_params: dict = field(default_factory=dict)               # their weights: key -> MLPStack


def compute_content(df: pd.DataFrame, grid: dict, merged: list, versions: dict, path: Path,
                    skipped) -> ReportContent:
    """Every table of the report from a store's frame and metadata (the analyses of analysis.py and verdict.py)."""
    from smoothness.analysis.verdict import verdict
    grids = [g for g in [grid, *merged] if g]
    title = f"smoothness report: {' + '.join(str(g.get('name')) for g in grids) or path.parent.name}"
    intro = (f"{len(df)} models in {path}. Generated {time.strftime('%Y-%m-%d %H:%M')} by smoothness "
             f"{versions.get('smoothness', '?')} (torch {versions.get('torch', '?')}).")
    if skipped:
        intro += (f" {len(skipped)} more stored row(s) could not be read and are left out: "
                  + ", ".join(k for k, _ in skipped[:20]) + (", …" if len(skipped) > 20 else "") + ".")
    for g in grids:
        if g.get("description"):
            intro += " " + (f"{g.get('name')}: " if len(grids) > 1 else "") + " ".join(str(g["description"]).split())
    c = ReportContent(title, intro, df)
    if not len(df):
        return c
    c.counts = A.status_counts(df)
    c.taus, c.ratios = A.kendall_taus(df), A.table2_ratios(df)
    c.table1, c.table2 = A.table1(df, c.taus), A.table2(df, c.ratios)
    lambdas = {k: v for g in grids for k, v in (g.get("table2_lambdas") or {}).items()}
    if lambdas:
        c.ratios_fixed = A.table2_ratios(df, lambdas)
        c.table2_fixed, c.r_by_n = A.table2(df, c.ratios_fixed, lambdas), A.r_norm_by_n(c.ratios_fixed)
    c.verdict = verdict(c.table1, c.table2)
    c.lr_sweep, c.depth = A.by_lr(df), A.by_depth(c.taus)
    c.optimizers = flatness.by_optimizer(df)
    c.by_size = A.by_size(df, list(A.TAU_MEASURES) + ["loss_test", "loss_train"])
    size = c.by_size
    present = {m: f"{m}_mean" in size and bool(size[f"{m}_mean"].notna().any()) for m in A.TAU_MEASURES}
    # across depths both WP and PN are shown; otherwise PN only where WP is not defined (registry.shown)
    c.shown = {m: s for m, s in A.TAU_MEASURES.items()
               if present[m] and (len(c.depth) or registry.shown(m, present))}
    c.figure2 = A.figure2_data(df)
    c.optimality, c.examples = optimality.ratio_table(df), optimality.examples(df)
    c.optimality_edges = optimality.edge_table(df)
    return c


def render(c: ReportContent, out: Path) -> dict:
    """Write the content's CSVs, Markdown tables, PNG figures, report.md and the self-contained report.html
    into out; returns {file name: path} of what was written."""
    written = {}

    def save_csv(name, frame):
        if len(frame):
            frame.to_csv(out / name, index=False, encoding="utf-8")
            written[name] = out / name

    def save_md(name, tabs):
        if tabs:
            (out / name).write_text("\n".join(t.markdown() for t in tabs), encoding="utf-8")
            written[name] = out / name

    sections_md, sections_html = [], []
    if len(c.runs):
        save_csv("runs.csv", c.runs.drop(columns=["versions"], errors="ignore"))
        c.counts.to_csv(out / "status_counts.csv", index=False, encoding="utf-8")
        written["status_counts.csv"] = out / "status_counts.csv"
        tables1 = table1_tables(c.table1) if len(c.table1) else []
        tables2 = table2_tables(c.table2) if len(c.table2) else []
        tables2_fixed = table2_tables(c.table2_fixed) if len(c.table2_fixed) else []
        tables_rn = r_norm_by_n_tables(c.r_by_n) if len(c.r_by_n) else []
        tables_v = verdict_tables(c.verdict) if len(c.verdict) else []
        tables_lr = lr_sweep_tables(c.lr_sweep) if len(c.lr_sweep) else []
        tables_depth = depth_tables(c.depth) if len(c.depth) else []
        tables_opt_cmp = flatness.optimizer_tables(c.optimizers) if len(c.optimizers) else []
        tables_n = by_size_tables(c.by_size, c.shown) if len(c.by_size) and c.shown else []
        for name, frame in (("verdict.csv", c.verdict), ("depth.csv", c.depth), ("lr_sweep.csv", c.lr_sweep),
                            ("table1.csv", c.table1), ("table2.csv", c.table2), ("optimizers.csv", c.optimizers),
                            ("table2_fixed.csv", c.table2_fixed), ("table2_fixed_ratios.csv", c.ratios_fixed),
                            ("r_norm_by_n.csv", c.r_by_n)):
            save_csv(name, frame)
        if len(c.table1):
            save_csv("table1_taus.csv", c.taus)
        if len(c.table2):
            save_csv("table2_ratios.csv", c.ratios)
        for name, tabs in (("verdict.md", tables_v), ("table1.md", tables1), ("table2.md", tables2 + tables2_fixed),
                           ("r_norm_by_n.md", tables_rn),
                           ("lr_sweep.md", tables_lr), ("depth.md", tables_depth), ("optimizers.md", tables_opt_cmp)):
            save_md(name, tabs)
        if tables_n:
            save_csv("measures_by_n.csv", c.by_size)
            save_md("measures_by_n.md", tables_n)
        figs = {}
        if figure2(c.figure2, out / "figure2.png"):
            figs["figure2.png"] = "Figure 2: each measure per regularization strength λ"
        if r_norm_figure(c.r_by_n, out / "r_norm_vs_n.png"):
            figs["r_norm_vs_n.png"] = "r_norm against the training size N at fixed λ"
        if _vs_n(c.by_size, c.shown, out / "measures_vs_n.png",
                 "Measures against training size (mean ± std over datasets and seeds, converged, unregularized)",
                 logy={"path_norm"}):   # PN grows exponentially with depth
            figs["measures_vs_n.png"] = "Measures against training size"
        if _vs_n(c.by_size, {"loss_test": "test loss (MSE)"}, out / "test_loss_vs_n.png",
                 "Held-out loss against training size", logy={"loss_test"}):
            figs["test_loss_vs_n.png"] = "Test loss against training size"
        if depth_figure(c.depth, out / "depth.png"):
            figs["depth.png"] = "Kendall's τ(N, measure) against the number of hidden layers"
        if lr_sweep_figure(c.lr_sweep, out / "lr_sweep.png"):
            figs["lr_sweep.png"] = "Sharpness, norms, smoothness and test loss against the learning rate"
        tables_opt = optimality.ratio_tables(c.optimality) if len(c.optimality) else []
        if tables_opt:
            tables_opt += optimality.edge_tables(c.optimality_edges)
            save_csv("optimality.csv", c.optimality)
            if len(c.optimality_edges):
                save_csv("optimality_edges.csv", c.optimality_edges)
            save_md("optimality.md", tables_opt)
        if optimality.interpolant_figure(c.examples, c.example_params, out / "interpolants.png"):
            figs["interpolants.png"] = ("1-D tasks: the training set, SGD's function and the smoothest interpolant "
                                        "of each measure")
        written.update({f: out / f for f in figs})
        blocks = [("Verdict", tables_v), ("Table 1", tables1), ("Measures by N", tables_n),
                  ("Table 2", tables2 + tables2_fixed), ("r_norm against N", tables_rn),
                  ("Optimality in one dimension", tables_opt), ("Depth", tables_depth),
                  ("Learning-rate sweep", tables_lr), ("Optimizers: flatness and smoothness", tables_opt_cmp),
                  ("Status", [status_table(c.counts)])]
        for head, tabs in blocks:
            if tabs:
                sections_md.append(f"## {head}\n\n" + "\n".join(t.markdown() for t in tabs))
                sections_html.append(f"<h2>{head}</h2>" + "".join(t.html() for t in tabs))
        if figs:
            sections_md.append("## Figures\n\n" + "\n".join(f"![{cap}]({f})\n" for f, cap in figs.items()))
            imgs = "".join(f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,"
                           f"{base64.b64encode((out / f).read_bytes()).decode()}'><figcaption>{html.escape(cap)}"
                           f"</figcaption></figure>" for f, cap in figs.items())
            sections_html.append(f"<h2>Figures</h2>{imgs}")
    else:
        sections_md.append("The store holds no finished models yet.")
        sections_html.append("<p>The store holds no finished models yet.</p>")
    # a path in the intro keeps its own bytes: a non-ASCII name read under LC_ALL=C holds surrogates
    (out / "report.md").write_text(f"# {c.title}\n\n{c.intro}\n\n" + "\n\n".join(sections_md) + "\n",
                                   encoding="utf-8", errors="surrogateescape")
    (out / "report.html").write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(c.title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(c.title)}</h1><p>{html.escape(c.intro)}</p>"
        + "".join(sections_html) + "</body></html>\n", encoding="utf-8", errors="surrogateescape")
    written["report.md"], written["report.html"] = out / "report.md", out / "report.html"
    _forget_stale(out, written)
    return written


MANIFEST = ".report-files"   # in a report folder: the files the last report wrote there


def _forget_stale(out: Path, written: dict) -> None:
    """Remove the files an earlier report wrote into `out` that this one did not (a table whose models are gone
    from the store must not stay beside the new ones), then list this report's files in the manifest. Files that
    no report wrote are left alone."""
    manifest = out / MANIFEST
    try:
        before = set(manifest.read_text(encoding="utf-8").split())
    except (OSError, UnicodeDecodeError):
        before = set()
    for name in before - set(written):
        if "/" not in name and name != MANIFEST:
            (out / name).unlink(missing_ok=True)
    manifest.write_text("\n".join(sorted(written)) + "\n", encoding="utf-8")
