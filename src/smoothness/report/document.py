"""The report of a results store: Markdown tables, CSVs, PNG figures and one self-contained HTML page."""
from __future__ import annotations

import base64
import contextlib
import html
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from smoothness.analysis import flatness, optimality, series, tables
from smoothness.errors import StoreError
from smoothness.experiments.storage.store import Store
from smoothness.experiments.storage.store import versions as store_versions
from smoothness.measures import registry
from smoothness.report import figures
from smoothness.report.format import (
    by_size_tables,
    depth_tables,
    edge_tables,
    lr_sweep_tables,
    optimizer_tables,
    r_norm_by_n_tables,
    ratio_tables,
    sampling_tables,
    status_table,
    table1_tables,
    table2_tables,
    verdict_tables,
)

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
    several N, r_norm_by_n.md/csv and r_norm_vs_n.png), status_counts.csv, runs.csv, figure2.png,
    measures_vs_n.png, test_loss_vs_n.png, report.md and a self-contained report.html; for grids with several
    learning rates also lr_sweep.md/csv and lr_sweep.png; with several architectures also depth.md/csv and
    depth.png; with several optimizers optimizers.md/csv (analysis.flatness); for 1-D tasks optimality.md/csv,
    optimality_edges.csv and interpolants.png. compute_content and render are the two halves.
    """
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    if not sources:
        raise StoreError("no results store to report on")
    if out_dir is not None:
        check_report_dir(Path(out_dir), "")
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
    check_report_dir(out, hint)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / REPORT_MARK).write_text("a folder written by smoothness report: a new report replaces its files\n",
                                       encoding="utf-8")
        return render(c, out)
    except OSError as e:
        why = e.strerror or str(e)
        if e.filename is not None and str(e.filename) != str(out):
            why += f": {e.filename}"
        raise StoreError(f"cannot write the report to {out} ({why}){hint}") from None


REPORT_MARK = ".smoothness-report"   # in every folder a report was written to: the next report may replace its files


def check_report_dir(out: Path, hint: str) -> None:
    """A StoreError unless a report may be written to `out`: a new or empty folder, or one a report was written to
    before (its mark, or the report.html of a version without marks); never a folder of the user's own files."""
    if out.exists() and not out.is_dir():
        raise StoreError(f"cannot write the report to {out}: it is a file, not a directory{hint}")
    if not out.is_dir() or (out / REPORT_MARK).exists() or not any(out.iterdir()):
        return
    try:
        with open(out / "report.html", "rb") as f:
            if b"<title>smoothness report" in f.read(200):
                return
    except OSError:
        pass
    raise StoreError(f"cannot write the report to {out}: the folder holds files that smoothness report did not "
                     f"write, which a report could replace; give a new or empty folder{hint or ' with --out'}")


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
    sampling: pd.DataFrame = field(default_factory=pd.DataFrame)     # relative standard errors of the estimates
    examples: pd.DataFrame = field(default_factory=pd.DataFrame)     # 1-D models drawn beside their interpolants
    example_params: dict = field(default_factory=dict)               # their weights: key -> MLPStack


def _trained_by(df: pd.DataFrame, meta_versions: dict) -> str:
    """Which versions trained the models: those their records name (several where a store grew over versions),
    else the store's."""
    recorded = [v for v in (df["versions"] if "versions" in df else []) if isinstance(v, dict)] or [meta_versions]
    seen = dict.fromkeys(f"smoothness {v.get('smoothness', '?')} (torch {v.get('torch', '?')})" for v in recorded)
    return "its models were trained by " + ", ".join(seen)


def compute_content(df: pd.DataFrame, grid: dict, merged: list, versions: dict, path: Path,
                    skipped) -> ReportContent:
    """Every table of the report from a store's frame and metadata (the analyses of analysis.py and verdict.py)."""
    from smoothness.analysis.verdict import verdict
    grids = [g for g in [grid, *merged] if g]
    title = f"smoothness report: {' + '.join(dict.fromkeys(str(g.get('name')) for g in grids)) or path.parent.name}"
    now = store_versions()
    intro = (f"{len(df)} models in {path}. Generated {time.strftime('%Y-%m-%d %H:%M')} by smoothness "
             f"{now['smoothness']} (torch {now['torch']}); {_trained_by(df, versions)}.")
    if skipped:
        intro += (f" {len(skipped)} more stored row(s) could not be read as models (damaged: an unreadable record "
                  "or an unknown status) and are left out: "
                  + ", ".join(k for k, _ in skipped[:20]) + (", …" if len(skipped) > 20 else "") + ".")
    for g in grids:
        if g.get("description"):
            intro += " " + (f"{g.get('name')}: " if len(grids) > 1 else "") + " ".join(str(g["description"]).split())
    c = ReportContent(title, intro, df)
    if not len(df):
        return c
    c.counts = tables.status_counts(df)
    c.taus, c.ratios = tables.kendall_taus(df), tables.table2_ratios(df)
    c.table1, c.table2 = tables.table1(df, c.taus), tables.table2(df, c.ratios)
    lambdas = {k: v for g in grids for k, v in (g.get("table2_lambdas") or {}).items()}
    if lambdas:
        c.ratios_fixed = tables.table2_ratios(df, lambdas)
        c.table2_fixed, c.r_by_n = tables.table2(df, c.ratios_fixed, lambdas), series.r_norm_by_n(c.ratios_fixed)
    c.verdict = verdict(c.table1, c.table2)
    c.lr_sweep, c.depth = series.by_lr(df), series.by_depth(c.taus)
    c.optimizers = flatness.by_optimizer(df)
    c.by_size = series.by_size(df, list(tables.TAU_MEASURES) + ["loss_test", "loss_train"])
    size = c.by_size
    present = {m: f"{m}_mean" in size and bool(size[f"{m}_mean"].notna().any()) for m in tables.TAU_MEASURES}
    # across depths both WP and PN are shown; otherwise PN only where WP is not defined (registry.shown)
    c.shown = {m: s for m, s in tables.TAU_MEASURES.items()
               if present[m] and (len(c.depth) or registry.shown(m, present))}
    c.figure2 = tables.figure2_data(df)
    c.optimality, c.examples = optimality.ratio_table(df), optimality.examples(df)
    c.optimality_edges = optimality.edge_table(df)
    c.sampling = tables.sampling_error(df)
    return c


@dataclass
class Section:
    """One part of the report: its tables (Markdown file `md`, and under `head` in report.md / report.html), the
    CSV files of its frames, and its figures (file, caption, draw(path) -> whether there was anything to draw)."""
    head: str
    tables: list = field(default_factory=list)
    md: str | None = None
    csvs: dict = field(default_factory=dict)
    figures: list = field(default_factory=list)


def sections(c: ReportContent) -> list[Section]:
    """The report's sections, in order, from its content; render() writes them. A section without tables, CSVs
    or figures to show writes nothing."""
    def tabs(frame, make, *args):
        return make(frame, *args) if len(frame) else []

    return [
        Section("Verdict", tabs(c.verdict, verdict_tables), "verdict.md", {"verdict.csv": c.verdict}),
        Section("Table 1", tabs(c.table1, table1_tables), "table1.md",
                {"table1.csv": c.table1, "table1_taus.csv": c.taus if len(c.table1) else c.table1}),
        Section("Measures by N", tabs(c.by_size, by_size_tables, c.shown) if c.shown else [], "measures_by_n.md",
                {"measures_by_n.csv": c.by_size if c.shown else c.by_size[:0]},
                [("measures_vs_n.png", "Measures against training size", lambda p: figures.vs_n(
                    c.by_size, c.shown, p, "Measures against training size (mean ± std over datasets and seeds, "
                    "converged, unregularized)", logy={"path_norm"})),   # PN grows exponentially with depth
                 ("test_loss_vs_n.png", "Test loss against training size", lambda p: figures.vs_n(
                     c.by_size, {"loss_test": "test loss (MSE)"}, p, "Held-out loss against training size",
                     logy={"loss_test"}))]),
        Section("Table 2", tabs(c.table2, table2_tables) + tabs(c.table2_fixed, table2_tables), "table2.md",
                {"table2.csv": c.table2, "table2_ratios.csv": c.ratios if len(c.table2) else c.table2,
                 "table2_fixed.csv": c.table2_fixed, "table2_fixed_ratios.csv": c.ratios_fixed},
                [("figure2.png", "Figure 2: each measure per regularization strength λ",
                  lambda p: figures.figure2(c.figure2, p))]),
        Section("r_norm against N", tabs(c.r_by_n, r_norm_by_n_tables), "r_norm_by_n.md", {"r_norm_by_n.csv": c.r_by_n},
                [("r_norm_vs_n.png", "r_norm against the training size N at fixed λ "
                                      "(open squares: the paper's at its N, where λ is the paper's)",
                  lambda p: figures.r_norm_figure(c.r_by_n, p))]),
        Section("Optimality in one dimension",
                tabs(c.optimality, ratio_tables) + (edge_tables(c.optimality_edges) if len(c.optimality) else []),
                "optimality.md", {"optimality.csv": c.optimality,
                                  "optimality_edges.csv": c.optimality_edges if len(c.optimality) else c.optimality},
                [("interpolants.png", "1-D tasks: the training set, SGD's function and the smoothest interpolant of "
                  "each measure", lambda p: figures.interpolant_figure(c.examples, c.example_params, p))]),
        Section("Depth", tabs(c.depth, depth_tables), "depth.md", {"depth.csv": c.depth},
                [("depth.png", "Kendall's τ(N, measure) against the number of hidden layers",
                  lambda p: figures.depth_figure(c.depth, p))]),
        Section("Learning-rate sweep", tabs(c.lr_sweep, lr_sweep_tables), "lr_sweep.md", {"lr_sweep.csv": c.lr_sweep},
                [("lr_sweep.png", "Sharpness, norms, smoothness and test loss against the learning rate",
                  lambda p: figures.lr_sweep_figure(c.lr_sweep, p))]),
        Section("Optimizers: flatness and smoothness", tabs(c.optimizers, optimizer_tables), "optimizers.md",
                {"optimizers.csv": c.optimizers}),
        Section("Sampling error", tabs(c.sampling, sampling_tables), "sampling_error.md",
                {"sampling_error.csv": c.sampling}),
        Section("Status", [status_table(c.counts)], None,
                {"runs.csv": c.runs.drop(columns=["versions", "init_outputs"], errors="ignore"),
                 "status_counts.csv": c.counts}),
    ]


def render(c: ReportContent, out: Path) -> dict:
    """Write the content's sections (CSVs, Markdown tables, PNG figures), report.md and the self-contained
    report.html into out; returns {file name: path} of what was written."""
    written, figs, body_md, body_html = {}, {}, [], []
    for sec in sections(c) if len(c.runs) else []:
        for name, frame in sec.csvs.items():
            if len(frame) or name == "status_counts.csv":
                frame.to_csv(out / name, index=False, encoding="utf-8")
                written[name] = out / name
        if sec.tables:
            if sec.md:
                (out / sec.md).write_text("\n".join(t.markdown() for t in sec.tables), encoding="utf-8")
                written[sec.md] = out / sec.md
            body_md.append(f"## {sec.head}\n\n" + "\n".join(t.markdown() for t in sec.tables))
            body_html.append(f"<h2>{sec.head}</h2>" + "".join(t.html() for t in sec.tables))
        for name, caption, draw in sec.figures:
            if draw(out / name):
                figs[name] = caption
                written[name] = out / name
    if figs:
        body_md.append("## Figures\n\n" + "\n".join(f"![{cap}]({f})\n" for f, cap in figs.items()))
        imgs = "".join(f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,"
                       f"{base64.b64encode((out / f).read_bytes()).decode()}'><figcaption>{html.escape(cap)}"
                       f"</figcaption></figure>" for f, cap in figs.items())
        body_html.append(f"<h2>Figures</h2>{imgs}")
    if not len(c.runs):
        body_md.append("The store holds no finished models yet.")
        body_html.append("<p>The store holds no finished models yet.</p>")
    # a path in the intro keeps its own bytes: a non-ASCII name read under LC_ALL=C holds surrogates
    (out / "report.md").write_text(f"# {c.title}\n\n{c.intro}\n\n" + "\n\n".join(body_md) + "\n",
                                   encoding="utf-8", errors="surrogateescape")
    (out / "report.html").write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(c.title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(c.title)}</h1><p>{html.escape(c.intro)}</p>"
        + "".join(body_html) + "</body></html>\n", encoding="utf-8", errors="surrogateescape")
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
