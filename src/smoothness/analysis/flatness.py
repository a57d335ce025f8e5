"""Does a flatter minimum in parameter space mean a smoother function in input space? Optimizers compared on the
same datasets: for settings trained with several optimizers (for example SGD and SAM at a few radii rho), per
optimizer and N the means over converged models of the parameter-space flatness (sharpness, Hessian trace), the
smoothness measures, the Lipschitz bracket and the test loss, and each one's mean ratio to SGD over the (pair, seed)
datasets where both converged (a paired comparison: the same training set and initialization).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from smoothness.analysis import tables
from smoothness.measures import registry

QUANTITIES = {**{k: registry.BY_KEY[k].short for k in registry.view(registry.FLATNESS)}, "loss_test": "test loss"}
KEY = [c for c in tables.SETTING if c not in ("optimizer", "rho")] + ["n_train"]
BASELINE = "sgd"


def by_optimizer(df: pd.DataFrame) -> pd.DataFrame:
    """Unregularized models of settings trained with several (optimizer, rho): per (setting, N, optimizer, rho)
    model counts, and per quantity the mean over converged models and the mean paired ratio to SGD."""
    df = tables.complete(df)
    base = df[df["regularizer"] == "none"] if len(df) else df
    if not len(base):
        return pd.DataFrame()
    base = base.assign(_opt=base["optimizer"] + "/" + base["rho"].astype(str))
    base = base[base.groupby(KEY)["_opt"].transform("nunique") >= 2]
    if not len(base) or not (base["optimizer"] == BASELINE).any():
        return pd.DataFrame()
    cols = [c for c in QUANTITIES if c in base and base[c].notna().any()]
    rows = []
    for keys, g in base.groupby(KEY, sort=True):
        conv = g[g["status"] == "converged"]
        ref = conv[conv["optimizer"] == BASELINE].set_index(["pair", "seed"])
        for (opt, rho), h in g.groupby(["optimizer", "rho"], sort=True):
            row = {**dict(zip(KEY, keys)), "optimizer": opt, "rho": rho, "models": len(h),
                   "converged": int((h["status"] == "converged").sum())}
            ok = h[h["status"] == "converged"].set_index(["pair", "seed"])
            both = ok.index.intersection(ref.index)
            row["paired"] = len(both)
            for c in cols:
                row[f"{c}_mean"] = float(ok[c].mean()) if len(ok) else np.nan
                row[f"{c}_ratio"] = float((ok.loc[both, c] / ref.loc[both, c]).mean()) if len(both) else np.nan
            rows.append(row)
    return pd.DataFrame(rows)
