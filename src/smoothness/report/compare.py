"""Compare two results stores model by model: the same grid trained on two devices (CPU against CUDA), in
two matmul precisions (fp32 against TF32), or by two versions of the code.

Models are matched on every configuration field (RunConfig) except those ignored (by default the matmul
precision), so the comparison answers: do the same models end with the same status, after the same number
of epochs, with the same losses and measures, and does Table 1 come out the same?
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd

from smoothness.analysis import tables
from smoothness.experiments.configuration.config import ADDED_FIELDS
from smoothness.experiments.running.pipeline import RunConfig
from smoothness.experiments.storage.store import Store
from smoothness.measures import registry

IGNORED = ("matmul_precision",)
# Quantities compared between matched models that converged in both stores.
QUANTITIES = ["epochs", "loss_train", "loss_test", *registry.keys()]


@dataclass
class Comparison:
    """Two stores matched model by model: statuses, relative differences and Table 1 side by side."""
    a: str
    b: str
    models_a: int
    models_b: int
    matched: pd.DataFrame            # one row per matched model: config, status_a/_b, quantity_a/_b
    ignored: tuple
    statuses: pd.DataFrame           # matched models by (status in A, status in B)
    differences: pd.DataFrame        # per quantity: models, median / 90th percentile / max relative difference
    table1: pd.DataFrame             # Kendall's tau mean and std per measure in A and in B
    apart: list = field(default_factory=list)   # where no model matched: how the configurations differ (apart())

    def no_match(self) -> str:
        """One line for two stores without a model in common: which fields set them apart."""
        if not self.models_a or not self.models_b:
            return (f"no model to match: {self.a if not self.models_a else self.b} holds none")
        why = f"; they differ in {'; '.join(self.apart)}" if self.apart else ""
        return (f"no model of {self.a} matched one of {self.b} on every configuration field"
                + (f" except {', '.join(self.ignored)}" if self.ignored else "") + why
                + " (--ignore FIELD leaves a field out of the match)")

    def markdown(self) -> str:
        """The comparison as Markdown."""
        same = int((self.matched["status_a"] == self.matched["status_b"]).sum())
        lines = [f"A: {self.a} ({self.models_a} models); B: {self.b} ({self.models_b} models)",
                 f"matched {len(self.matched)} models on every configuration field"
                 + (f" except {', '.join(self.ignored)}" if self.ignored else ""),
                 f"status equal for {same} of {len(self.matched)}", ""]
        if not len(self.matched):
            return "\n".join(lines[:2]) + "\nno model of A has a counterpart in B: nothing to compare\n"
        lines.append(_table("Matched models by status in A and in B", self.statuses))
        if len(self.differences):
            lines.append(_table("Relative difference |A - B| / |A| over models converged in both", self.differences))
        if len(self.table1):
            t, note = self.table1, ""
            if t["setting"].nunique() == 1:
                t, note = t.drop(columns="setting"), f"setting: {t['setting'].iloc[0]}"
            lines.append(_table("Table 1, Kendall's tau(N, measure), mean and std over (pair, seed)", t, note))
        return "\n".join(lines).rstrip() + "\n"


def _table(title: str, df: pd.DataFrame, note: str = "") -> str:
    """df as a Markdown table, cells formatted as in the report."""
    from smoothness.report.format import Table, fmt
    rows = [[fmt(v) if isinstance(v, (float, np.floating)) else str(v) for v in r] for r in df.itertuples(index=False)]
    return Table(title, [str(c) for c in df.columns], rows, note).markdown()


def config_columns(ignore=IGNORED) -> list[str]:
    """The configuration columns that match a model of one store to one of the other (all but `ignore`)."""
    return [f.name for f in fields(RunConfig) if f.name not in ignore]


def match(a: pd.DataFrame, b: pd.DataFrame, ignore=IGNORED) -> pd.DataFrame:
    """Inner join of two store frames on the configuration columns; other columns get suffixes _a and _b."""
    cols = [c for c in config_columns(ignore) if c in a and c in b]
    keep = cols + ["status"] + [q for q in QUANTITIES]
    a = a[[c for c in keep if c in a]]
    b = b[[c for c in keep if c in b]]
    return a.merge(b, on=cols, suffixes=("_a", "_b"), how="inner")


def apart(a: pd.DataFrame, b: pd.DataFrame, ignore=IGNORED, most: int = 4) -> list[str]:
    """The configuration fields whose values in store frames a and b are not the same sets, each with its values
    (a few), for a comparison where no model matched: e.g. ["max_epochs (A: 20; B: 30)"]."""
    def values(df, c) -> list[str]:
        return sorted({"none" if not isinstance(v, (list, tuple)) and pd.isna(v) else str(v) for v in df[c]}
                      if c in df else [])

    def shown(vs: list[str]) -> str:
        return ", ".join(vs[:3]) + (f", … ({len(vs)} values)" if len(vs) > 3 else "") if vs else "absent"
    out = []
    for c in config_columns(ignore):
        va, vb = values(a, c), values(b, c)
        if va != vb:
            out.append(f"{c} (A: {shown(va)}; B: {shown(vb)})")
    return out[:most] + ([f"{len(out) - most} more"] if len(out) > most else [])


def relative_differences(m: pd.DataFrame) -> pd.DataFrame:
    """Per quantity, over matched models converged in both with finite values in both."""
    both = m[(m["status_a"] == "converged") & (m["status_b"] == "converged")]
    rows = []
    for q in QUANTITIES:
        if f"{q}_a" not in both or f"{q}_b" not in both:
            continue
        x = pd.to_numeric(both[f"{q}_a"], errors="coerce").to_numpy(float)
        y = pd.to_numeric(both[f"{q}_b"], errors="coerce").to_numpy(float)
        ok = np.isfinite(x) & np.isfinite(y)
        if not ok.any():
            continue
        rel = np.abs(x[ok] - y[ok]) / np.maximum(np.abs(x[ok]), np.finfo(np.float32).tiny)
        rows.append({"quantity": q, "models": int(ok.sum()), "median": float(np.median(rel)),
                     "90th pct": float(np.quantile(rel, 0.9)), "max": float(rel.max()),
                     "mean A": float(x[ok].mean()), "mean B": float(y[ok].mean())})
    return pd.DataFrame(rows)


def _table1(df: pd.DataFrame, ignore) -> pd.DataFrame:
    df = df.assign(**{c: ADDED_FIELDS[c] for c in ignore if c in ADDED_FIELDS})   # one setting in A and B
    t = tables.table1(df)
    if not len(t):
        return t
    return t[["setting", "measure", "tau_mean", "tau_std", "datasets"]]


def compare(a, b, ignore=IGNORED) -> Comparison:
    """Compare the stores (experiment directories or .sqlite files) a and b."""
    with Store(a, create=False) as sa, Store(b, create=False) as sb:
        fa, fb = sa.frame(), sb.frame()
        pa, pb = str(sa.path), str(sb.path)
    ignore = tuple(ignore)
    m = match(fa, fb, ignore) if len(fa) and len(fb) else pd.DataFrame(columns=["status_a", "status_b"])
    statuses = (m.groupby(["status_a", "status_b"]).size().rename("models").reset_index()
                if len(m) else pd.DataFrame(columns=["status_a", "status_b", "models"]))
    t1a = _table1(fa, ignore) if len(fa) else pd.DataFrame()
    t1b = _table1(fb, ignore) if len(fb) else pd.DataFrame()
    t1 = pd.DataFrame()
    if len(t1a) and len(t1b):
        t1 = t1a.merge(t1b, on=["setting", "measure"], suffixes=(" A", " B"), how="outer")
        order = {m: i for i, m in enumerate(tables.TAU_MEASURES.values())}
        t1 = t1.sort_values(["setting", "measure"], key=lambda c: c.map(order) if c.name == "measure" else c,
                            ignore_index=True)
    return Comparison(pa, pb, len(fa), len(fb), m, ignore, statuses,
                      relative_differences(m) if len(m) else pd.DataFrame(), t1,
                      apart(fa, fb, ignore) if len(fa) and len(fb) and not len(m) else [])
