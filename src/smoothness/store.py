"""The results store: one SQLite database per experiment directory, one row per finished model.

Each model is committed in its own transaction the moment it is trained and measured (WAL journal,
synchronous=FULL), so a process killed at any moment loses at most the models still in flight. Where
models are measured in batches (on a GPU), a trained model first goes to the `trained` table, with
its weights, and moves to `runs` in the transaction that stores its measures; a resumed grid measures
what it finds there instead of training it again. The primary key is the
hash of the model's full configuration (grid.config_key); inserting a key twice is a no-op, so a resumed
grid can never duplicate a finished model.
"""
from __future__ import annotations

import io
import json
import math
import platform
import sqlite3
import time
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .models import MLPStack

SCHEMA_VERSION = 1
# Config fields added after the first stored models, with the value that records without them had.
ADDED_FIELDS = {"optimizer": "sgd", "matmul_precision": "fp32"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    finished_at TEXT NOT NULL,
    data TEXT, pair_a INTEGER, pair_b INTEGER, n_train INTEGER, seed INTEGER,
    regularizer TEXT, lam REAL, lr REAL, status TEXT, epochs INTEGER,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS weights (key TEXT PRIMARY KEY REFERENCES runs(key), state BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trained (key TEXT PRIMARY KEY, finished_at TEXT NOT NULL, record TEXT NOT NULL,
                                    state BLOB NOT NULL);
"""


def versions() -> dict:
    """Versions recorded with every stored model."""
    from . import __version__
    return {"smoothness": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _clean(v):
    """JSON-safe values: non-finite floats as None, tuples as lists, NumPy scalars as Python numbers."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (tuple, list)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.generic,)):
        return _clean(v.item())
    return v


class Store:
    """Append-only results of one experiment directory (`<dir>/results.sqlite`)."""

    FILENAME = "results.sqlite"

    def __init__(self, path, *, create: bool = True):
        path = Path(path)
        if path.is_dir() or path.suffix == "":
            path = path / self.FILENAME
        if not path.exists() and not create:
            raise DataError(f"no results store at {path} (run a grid first: smoothness run GRID --out DIR)")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        try:
            self.db = sqlite3.connect(str(path), timeout=60, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
            row = self.db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
            if row is None:
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise DataError(f"{path}: results store schema {row[0]}, this version reads {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            raise DataError(f"{path} is not a readable results store ({e})") from None

    def close(self):
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- writing ---------------------------------------------------------------------------------
    def add(self, key: str, record: dict, params: MLPStack | None = None) -> bool:
        """Commit one finished model (and its weights) atomically; False if the key was already stored.
        The model leaves the `trained` table in the same transaction."""
        rec = {k: _clean(v) for k, v in record.items() if k != "params"}
        rec.setdefault("versions", versions())
        blob = None if params is None else _blob(params)
        pair = rec.get("pair") or [None, None]
        row = (key, _now(), rec.get("data"), pair[0], pair[1], rec.get("n_train"),
               rec.get("seed"), rec.get("regularizer"), rec.get("lam"), rec.get("lr"), rec.get("status"),
               rec.get("epochs"), json.dumps(rec, sort_keys=True))
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.execute("INSERT OR IGNORE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
            added = cur.rowcount == 1
            if added and blob is not None:
                cur.execute("INSERT OR REPLACE INTO weights VALUES (?, ?)", (key, blob))
            cur.execute("DELETE FROM trained WHERE key=?", (key,))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return added

    def add_trained(self, key: str, record: dict, params: MLPStack) -> None:
        """Commit a model that finished training and waits to be measured (its record so far and weights)."""
        rec = json.dumps({k: _clean(v) for k, v in record.items() if k != "params"}, sort_keys=True)
        self.db.execute("INSERT OR REPLACE INTO trained SELECT ?, ?, ?, ? WHERE NOT EXISTS "
                        "(SELECT 1 FROM runs WHERE key=?)", (key, _now(), rec, _blob(params), key))

    def trained(self) -> list[tuple[str, dict, MLPStack]]:
        """Models trained but not measured yet: (key, record, params) each (see add_trained)."""
        return [(key, json.loads(rec), _params(state)) for key, rec, state in self.db.execute(
            "SELECT key, record, state FROM trained WHERE key NOT IN (SELECT key FROM runs) ORDER BY rowid")]

    def set_meta(self, name: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, json.dumps(value)))

    # -- reading ---------------------------------------------------------------------------------
    def meta(self, name: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return json.loads(row[0]) if row else default

    def keys(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT key FROM runs")}

    def statuses(self) -> dict[str, str]:
        """The status of every stored model, by key (from the indexed column, without parsing records)."""
        return dict(self.db.execute("SELECT key, status FROM runs"))

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    def records(self) -> list[dict]:
        """Every stored model's record (config, status, losses, measures, timings, versions), with 'key'."""
        return [{**json.loads(rec), "key": key}
                for key, rec in self.db.execute("SELECT key, record FROM runs ORDER BY rowid")]

    def frame(self):
        """The records as a pandas DataFrame (one row per model; pair as 'pair' = 'a/b')."""
        import pandas as pd
        recs = self.records()
        df = pd.DataFrame(recs)
        if len(df):
            # config fields added after the first stored models: missing means the default of the time
            for c, v in ADDED_FIELDS.items():
                df[c] = df[c].fillna(v) if c in df else v
            if "pair" in df:
                df["pair"] = df["pair"].map(lambda p: f"{p[0]}/{p[1]}" if isinstance(p, list) else p)
            if "hidden" in df:
                df["hidden"] = df["hidden"].map(lambda h: "-".join(map(str, h)) if isinstance(h, list) else h)
            for c in df.columns:  # measures stored as null (non-finite) come back as None
                if df[c].dtype == object and c not in ("pair", "hidden", "data", "status", "regularizer", "optimizer",
                                                       "device", "key", "versions", "matmul_precision"):
                    try:
                        df[c] = pd.to_numeric(df[c])
                    except (ValueError, TypeError):
                        pass
        return df

    def params(self, key: str) -> MLPStack:
        row = self.db.execute("SELECT state FROM weights WHERE key=?", (key,)).fetchone()
        if row is None:
            raise DataError(f"no stored weights for model {key}")
        return _params(row[0])


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _blob(params: MLPStack) -> bytes:
    buf = io.BytesIO()
    torch.save(params.state_dict(), buf)
    return buf.getvalue()


def _params(blob: bytes) -> MLPStack:
    return MLPStack.from_state_dict(torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True))
