"""Stored records as a table: one pandas DataFrame row per model, with the config fields added after the first
stored models filled with the default of their time, and lists shown in a few words (pair 'a/b', hidden '64-64'
and empty for a family other than the MLP, classes '0-1-2', the model family 'cnn 8-16 3 max'), and the columns
renamed since under their names now (current)."""
from __future__ import annotations

from smoothness.experiments.configuration.config import ADDED_FIELDS

# Record columns renamed since models were first stored: old name -> name now. A stored record keeps the name it
# was written with; reading it gives the name now (current), with the columns beside it (held-out or training
# points, standard error).
RENAMED = {old + suffix: new + suffix for old, new in {"minibatch_grad_norm": "minibatch_gradient_norm"}.items()
           for suffix in ("", "_se", "_train", "_train_se")}


def current(rec: dict) -> dict:
    """A stored record with its columns under their names now (RENAMED); a column already under its name now wins
    over its old one."""
    if not any(k in RENAMED for k in rec):
        return rec
    return {RENAMED.get(k, k): v for k, v in rec.items() if k not in RENAMED or RENAMED[k] not in rec}


def frame(recs: list[dict]):
    """The records as a pandas DataFrame (one row per model; pair as 'pair' = 'a/b'; old column names read as
    their names now: current)."""
    import pandas as pd
    df = pd.DataFrame([current(r) for r in recs])
    if len(df):
        # config fields added after the first stored models: missing means the default of the time
        for c, v in ADDED_FIELDS.items():
            if c not in df:
                df[c] = pd.Series([v] * len(df), index=df.index, dtype=object) if isinstance(v, tuple) else v
            elif v is not None:
                df[c] = df[c].map(lambda x, v=v: v if _missing(x) else x)
        other = df["model"].map(lambda m: isinstance(m, dict)) if "model" in df else None
        if "model" in df:   # the family and its settings in a few words ('mlp' for the paper's nets)
            df["model"] = df["model"].map(model_label)
        if "classes" in df:
            df["classes"] = df["classes"].map(lambda c: "-".join(map(str, c)) if isinstance(c, (list, tuple))
                                              else "")
        if "pair" in df:
            df["pair"] = df["pair"].map(lambda p: f"{p[0]}/{p[1]}" if isinstance(p, list) else p)
        if "hidden" in df:
            df["hidden"] = df["hidden"].map(lambda h: "-".join(map(str, h)) if isinstance(h, list) else h)
            if other is not None and other.any():   # the MLP's widths: another family's row has none
                df.loc[other, "hidden"] = ""
        for c in df.columns:  # measures stored as null (non-finite) come back as None
            if df[c].dtype == object and c not in ("pair", "hidden", "data", "status", "regularizer", "optimizer",
                                                   "device", "key", "versions", "matmul_precision", "model",
                                                   "classes", "loss"):
                try:
                    df[c] = pd.to_numeric(df[c])
                except (ValueError, TypeError):
                    pass
    return df



def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and x != x)


def model_label(spec) -> str:
    """A stored model's family in a few words: 'mlp', or e.g. 'cnn 8-16 3 max' (the settings' values)."""
    if not isinstance(spec, dict):
        return "mlp"
    parts = []
    for k, v in spec.items():
        if k == "family":
            continue
        if isinstance(v, dict):
            v = ",".join(f"{a}={b}" for a, b in v.items())
        parts.append("-".join(map(str, v)) if isinstance(v, list) else str(v))
    return " ".join([spec["family"], *parts])
