"""The paper's question answered per measure from the data a store holds: does SGD optimize it?

The paper's reading (sec. 4.2 and 4.3): if SGD found the smoothest interpolant of its training set in the sense
of a measure S, then (i) S of the trained network would grow monotonically with nested training sets (Kendall's
tau(N, S) = 1, Table 1), and (ii) explicit regularization with S could not make an interpolating network
smoother (r_norm, eq. 16, close to 1, Table 2). A low tau or a low r_norm each contradicts the hypothesis;
both high are consistent with it. The thresholds below turn that reading into rules; the same rules applied to
the paper's own values give the paper's conclusions (tested), and where our data cannot support a reading the
verdict says why instead of guessing.
"""
from __future__ import annotations

import math

import pandas as pd

from smoothness.measures import registry
from smoothness.runtime.values import counted

TAU_MONOTONE = 0.8      # tau >= this: S grows (nearly) monotonically with N
TAU_NOT_MONOTONE = 0.5  # tau <= this: S is far from monotone in N
R_NOT_REDUCIBLE = 0.85  # r_norm >= this: explicit regularization hardly reduces S
R_REDUCIBLE = 0.7       # r_norm <= this: explicit regularization reduces S substantially
MIN_GAP = 0.05          # (mu_unreg - l_S) / mu_unreg below this: r_norm divides by a near-zero difference
MIN_DATASETS = 2        # datasets (a pair's or a task of classes' seeds) behind a tau or an r_norm
MIN_SIZES = 3           # distinct training sizes behind a tau
PAPER_N_MAX = 8192

CONSISTENT, NOT_OPTIMIZED, INCONCLUSIVE = ("consistent with SGD optimizing it", "SGD does not optimize it",
                                           "inconclusive")
MEASURES = tuple(registry.shorts(paper=True).values())


def _ok(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def read_tau(tau, datasets: int, sizes: int) -> tuple[str | None, str]:
    """(monotone / not / partly / None when the data cannot tell, the reason or the reading in words)."""
    if not _ok(tau) or datasets < MIN_DATASETS or sizes < MIN_SIZES:
        return None, f"too little data for τ ({datasets} datasets, {sizes} sizes; need {MIN_DATASETS} and {MIN_SIZES})"
    if tau >= TAU_MONOTONE:
        return "monotone", f"monotone in N (τ ≥ {TAU_MONOTONE:g})"
    if tau <= TAU_NOT_MONOTONE:
        return "not", f"not monotone in N (τ ≤ {TAU_NOT_MONOTONE:g})"
    return "partly", "partly monotone in N"


# why a ladder has no edge, in the verdict and in Table 2's λ cell (report.format)
NO_BASELINE = "no unregularized model reached the loss threshold either: raise the epoch cap or change the rate"
NO_LAMBDA = "no λ > 0 reached the loss threshold: start the ladder lower"


def read_r(r, datasets: int, lam, ladder_short: bool, unreg=None, lower=0.0,
           baselines: int | None = None) -> tuple[str | None, str]:
    """(reducible / not / partly / None when the data cannot tell, the reason or the reading in words).
    unreg, lower: mu_unreg and l_S of eq. 16; r_norm means nothing when mu_unreg hardly exceeds l_S. baselines:
    how many lambda = 0 models converged (none: the ladder is not the cause of a missing lambda)."""
    if not _ok(lam):
        return None, NO_BASELINE if baselines == 0 else NO_LAMBDA
    if not _ok(r) and not _ok(lower):   # the cause whatever the number of datasets
        return None, ("r_norm is undefined: eq. 16 needs the measure's lower bound l_S, which this task has not "
                      "(FPL with several outputs)")
    if not _ok(r) and datasets >= MIN_DATASETS:
        return None, "r_norm could not be computed"
    if not _ok(r) or datasets < MIN_DATASETS:
        return None, f"too little data for r_norm ({counted(datasets, 'dataset')}; need {MIN_DATASETS})"
    if _ok(unreg) and _ok(lower) and lower > 0 and (unreg - lower) < MIN_GAP * abs(unreg):
        return None, (f"the unregularized mean {unreg:.3g} lies within {MIN_GAP:.0%} of the lower bound {lower:g}: "
                      "r_norm divides by a near-zero difference")
    if r <= R_REDUCIBLE:
        return "reducible", f"reduced by regularization (r_norm ≤ {R_REDUCIBLE:g})"
    if r >= R_NOT_REDUCIBLE:
        if ladder_short:
            return None, ("hardly reduced up to the top of the λ ladder, but every λ tried still converged: "
                          "a larger λ might reduce it (extend the ladder)")
        return "not", f"hardly reducible (r_norm ≥ {R_NOT_REDUCIBLE:g})"
    return "partly", "partly reduced by regularization"


def reading(tau_kind, r_kind) -> str:
    """The paper's reading from the readings of tau and r_norm."""
    if tau_kind == "not" or r_kind == "reducible":
        return NOT_OPTIMIZED
    if tau_kind == "monotone" and r_kind == "not":
        return CONSISTENT
    return INCONCLUSIVE


def _paper_reading(short: str) -> str:
    """The rules applied to the paper's Tables 1 and 2 (45 pairs x 3 seeds, N = 64...8192; 45 pairs at N = 10,000)."""
    from smoothness.analysis.tables import PAPER_TABLE1, PAPER_TABLE2
    name = registry.by_short(short).key
    tau = PAPER_TABLE1[name][0]
    r = PAPER_TABLE2[name][3]
    return reading(read_tau(tau, 135, 8)[0], read_r(r, 45, 1.0, False)[0])


def _best(rows: pd.DataFrame, by: list[str]) -> pd.Series | None:
    """The row of a measure's candidates that stands for its task: the most datasets (then `by`'s other columns,
    descending); ties go to the first setting label, so the choice does not depend on the store's row order."""
    if not len(rows):
        return None
    return rows.sort_values("setting", kind="stable").sort_values(by, ascending=False, kind="stable").iloc[0]


def verdict(t1: pd.DataFrame, t2: pd.DataFrame) -> pd.DataFrame:
    """One row per measure and task (data, architecture and loss: tables.task_label): tau and r_norm with what
    stands behind them, our reading and the paper's. Settings of one task that differ in rates or caps answer the
    same question: the one with the most datasets stands for it, named in 'why' where there was a choice; tasks
    are never mixed. t1, t2: analysis.table1 and analysis.table2 of the same store."""
    t1, t2 = (t.assign(task=t["data"]) if len(t) and "task" not in t else t for t in (t1, t2))
    t1, t2 = (t.assign(setting="") if len(t) and "setting" not in t else t for t in (t1, t2))
    rows = []
    tasks = {**dict.fromkeys(t1["task"] if len(t1) else []), **dict.fromkeys(t2["task"] if len(t2) else [])}
    for task in sorted(tasks):
        for short in MEASURES:
            # the measure, or where it has no runs, a measure that stands in for it (WP: PN, NP)
            for name in (short, *(registry.get(k).short for k in registry.stand_ins(registry.by_short(short).key))):
                a = t1[(t1["task"] == task) & (t1["measure"] == name)] if len(t1) else t1
                b = t2[(t2["task"] == task) & (t2["measure"] == name)] if len(t2) else t2
                if len(a) or len(b):
                    break
            if not len(a) and not len(b):
                continue
            several = len(a) > 1, len(b) > 1
            # most pairs, then the largest N (the paper's Table 2 is at N = 10,000)
            a, b = _best(a, ["datasets"]), _best(b, ["datasets", "n_train"])
            chose = ([f"τ from {a.setting}"] if several[0] else []) + ([f"r_norm from {b.setting}"] if several[1]
                                                                        else [])
            tau_kind, tau_words = (read_tau(a.tau_mean, int(a.datasets), int(a.n_sizes)) if a is not None
                                   else (None, "no Table 1 runs"))
            r_kind, r_words = (read_r(b.r_norm_mean, int(b.datasets), b.lam, bool(b.ladder_short),
                                      b.get("unreg_mean"), b.get("lower_bound", 0.0), b.get("baselines_converged"))
                               if b is not None else (None, "no Table 2 runs"))
            notes = [tau_words, r_words]
            if a is not None and int(a.n_max) < PAPER_N_MAX:
                notes.append(f"N ≤ {int(a.n_max)} (the paper's N reaches {PAPER_N_MAX})")
            if name != short:
                notes.append(f"{name} in {short}'s place ({registry.by_short(name).equals})")
            rows.append({"task": task, "data": (a if a is not None else b)["data"],
                         "measure": short if name == short else f"{name} (for {short})",
                         "tau": a.tau_mean if a is not None else math.nan,
                         "tau_std": a.tau_std if a is not None else math.nan,
                         "tau_datasets": int(a.datasets) if a is not None else 0,
                         "tau_models": int(a.converged) if a is not None else 0,
                         "n_max": int(a.n_max) if a is not None else 0,
                         "r_norm": b.r_norm_mean if b is not None else math.nan,
                         "r_norm_std": b.r_norm_std if b is not None else math.nan,
                         "r_datasets": int(b.datasets) if b is not None else 0,
                         "lam": b.lam if b is not None else None, "n_train_reg": int(b.n_train) if b is not None else 0,
                         "reading": reading(tau_kind, r_kind), "why": "; ".join(notes + chose),
                         "tau_setting": a.setting if a is not None else "",
                         "r_setting": b.setting if b is not None else "",
                         "paper_tau": a.paper_tau_mean if a is not None else None,
                         "paper_r_norm": b.paper_r_norm_mean if b is not None else None,
                         "paper_reading": _paper_reading(short)})
    return pd.DataFrame(rows)
