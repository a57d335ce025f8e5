"""The results store: one SQLite database per experiment directory, one row per finished model.

Each model is committed in its own transaction the moment it is trained and measured (WAL journal,
synchronous=FULL), so a process killed at any moment loses at most the models still in flight. Where
models are measured in batches (on a GPU), a trained model first goes to the `trained` table, with
its weights, and moves to `runs` in the transaction that stores its measures; a resumed grid measures
what it finds there instead of training it again. The primary key is the
hash of the model's full configuration (grid.config_key); inserting a key twice is a no-op, so a resumed
grid can never duplicate a finished model. Finding the file a path names and opening it (to write, or read-only
with its checks) is opening.py's; the SQLite file under the store, storefile.py's.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import platform
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
import torch

from smoothness.errors import StoreError
from smoothness.experiments.storage import records
from smoothness.experiments.storage.opening import FILENAME, open_for_writing, open_read_only, store_path
from smoothness.experiments.storage.storefile import (
    LOCK_TIMEOUT,
    file_identity,
    parse_record,
    retry_busy,
    row_problem,
    write_failure,
)
from smoothness.models import Stack, stack_from_state


def versions() -> dict:
    """Versions recorded with every stored model."""
    from smoothness import __version__
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


def warn(msg: str) -> None:
    """A problem that does not stop the command (a skipped row), as one line on stderr."""
    print(f"smoothness: warning: {msg}", file=sys.stderr, flush=True)


class Store:
    """Append-only results of one experiment directory (`<dir>/results.sqlite`)."""

    FILENAME = FILENAME

    def __init__(self, path, *, create: bool = True):
        """Open the store of `path` (a directory or the store file, see store_path). create=True (running a
        grid) creates the directory and the store as needed; create=False opens an existing store read-only
        (report, compare, dry runs): nothing is written to it, it needs no write access, and a store that
        fails SQLite's integrity check is refused with one error naming the file."""
        self.path = path = store_path(path)
        self.readonly = not create
        self.skipped: list[tuple[str, str]] = []   # (key, why) of the rows the last records() could not read
        self._identity = None   # (device, inode) of the file this store writes (_still_there)
        if self.readonly:
            self.db = open_read_only(path)
        else:
            self.db = open_for_writing(path)
            self._identity = file_identity(path)

    def _still_there(self) -> None:
        """A StoreError if the store file was deleted or replaced since it was opened: SQLite would go on writing
        into the unlinked file, and everything committed would vanish with the process."""
        if file_identity(self.path) != self._identity:
            raise StoreError(f"the results store {self.path} was deleted or replaced while this run was writing to "
                             "it: the models stored in it are gone, and this run stops; run the same command again "
                             "to train them into a new store")

    @contextlib.contextmanager
    def _writing(self, what: str):
        """Map SQLite's failures while writing (disk full, a lock held too long, damage) to one StoreError that
        says what is kept."""
        self._still_there()
        try:
            yield
        except sqlite3.DatabaseError as e:
            self._rollback()
            raise StoreError(write_failure(self.path, self.db, e, what)) from None

    def close(self):
        """Close the database; a transaction left open by an interrupt is rolled back first."""
        try:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        finally:
            self.db.close()

    def _rollback(self) -> None:
        """Undo the open transaction, if there is one. An interrupt can land anywhere in a transaction: before
        its BEGIN took effect, or after its COMMIT did (then there is nothing to undo); SQLite itself says which."""
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- writing ---------------------------------------------------------------------------------
    def add(self, key: str, record: dict, params: Stack | None = None) -> bool:
        """Commit one finished model (and its weights) atomically; False if the key was already stored. A damaged
        row of the key (damaged()) is replaced. The model leaves the `trained` table in the same transaction."""
        rec = {k: _clean(v) for k, v in record.items() if k != "params"}
        rec.setdefault("versions", versions())
        blob = None if params is None else _blob(params)
        pair = rec.get("pair") or [None, None]
        row = (key, _now(), rec.get("data"), pair[0], pair[1], rec.get("n_train"),
               rec.get("seed"), rec.get("regularizer"), rec.get("lam"), rec.get("lr"), rec.get("status"),
               rec.get("epochs"), json.dumps(rec, sort_keys=True))
        db = self.db
        with self._writing(f"model {key}"):
            try:
                retry_busy(lambda: db.execute("BEGIN IMMEDIATE"), LOCK_TIMEOUT)
                old = db.execute("SELECT status, record FROM runs WHERE key=?", (key,)).fetchone()
                if old is not None and row_problem(*old):   # a damaged row (see damaged()): replaced
                    db.execute("DELETE FROM weights WHERE key=?", (key,))
                    db.execute("DELETE FROM runs WHERE key=?", (key,))
                added = db.execute("INSERT OR IGNORE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                                   row).rowcount == 1
                if added and blob is not None:
                    db.execute("INSERT OR REPLACE INTO weights VALUES (?, ?)", (key, blob))
                db.execute("DELETE FROM trained WHERE key=?", (key,))
                db.execute("COMMIT")
            except BaseException:   # KeyboardInterrupt included: committed stays committed, the rest is undone
                self._rollback()
                raise
        return added

    def add_trained(self, key: str, record: dict, params: Stack) -> None:
        """Commit a model that finished training and waits to be measured (its record so far and weights)."""
        rec = json.dumps({k: _clean(v) for k, v in record.items() if k != "params"}, sort_keys=True)
        with self._writing(f"trained model {key}"):
            self.db.execute("INSERT OR REPLACE INTO trained SELECT ?, ?, ?, ? WHERE NOT EXISTS "
                            "(SELECT 1 FROM runs WHERE key=?)", (key, _now(), rec, _blob(params), key))

    def trained(self) -> list[tuple[str, dict, Stack]]:
        """Models trained but not measured yet: (key, record, params) each (see add_trained). A row whose
        record or weights cannot be read is discarded with a warning, so that its model is trained again."""
        out, bad = [], []
        for key, rec, state in self.db.execute("SELECT key, record, state FROM trained WHERE key NOT IN "
                                                "(SELECT key FROM runs) ORDER BY rowid").fetchall():
            try:
                out.append((key, records.current(parse_record(rec)), _params(state)))
            except Exception as e:  # noqa: BLE001 - whatever a damaged blob makes torch.load raise
                bad.append((key, f"{type(e).__name__}: {e}".splitlines()[0][:120]))
        if bad:
            if not self.readonly:
                self.db.executemany("DELETE FROM trained WHERE key=?", [(k,) for k, _ in bad])
            warn(f"{self.path}: {len(bad)} trained model(s) with unreadable record or weights "
                 f"{'discarded, to be trained again' if not self.readonly else 'skipped'}: {_keys(bad)}")
        return out

    @contextlib.contextmanager
    def transaction(self):
        """One write transaction (BEGIN IMMEDIATE: other writers wait) around reads and set_meta calls, so that a
        check and the write it decides on are atomic."""
        with self._writing("its meta table"):
            retry_busy(lambda: self.db.execute("BEGIN IMMEDIATE"), LOCK_TIMEOUT)
        try:
            yield
            with self._writing("its meta table"):
                self.db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def set_meta(self, name: str, value) -> None:
        """Store a JSON value under name in the meta table."""
        with self._writing(f"the entry {name!r} of its meta table"):
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, json.dumps(value)))

    # -- reading ---------------------------------------------------------------------------------
    def meta(self, name: str, default=None):
        """The JSON value stored under name, or default."""
        row = self.db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        if row is None:
            return default
        try:
            return json.loads(row[0])
        except (TypeError, ValueError):
            warn(f"{self.path}: unreadable meta entry {name!r} ignored")
            return default

    def _scan(self) -> tuple[dict[str, str], list[tuple[str, str]]]:
        """The status of every sound model row by key, and (key, why) of the damaged ones (row_problem)."""
        sound, bad = {}, []
        for key, status, rec in self.db.execute("SELECT key, status, record FROM runs ORDER BY rowid"):
            why = row_problem(status, rec)
            if why is None:
                sound[key] = status
            else:
                bad.append((key, why))
        return sound, bad

    def keys(self) -> set[str]:
        """The keys of the finished models (damaged rows left out: see damaged())."""
        return set(self._scan()[0])

    def statuses(self) -> dict[str, str]:
        """The status of every stored model, by key; damaged rows (damaged()) are left out."""
        return self._scan()[0]

    def damaged(self) -> list[tuple[str, str]]:
        """(key, why) of every damaged model row: its record is not a JSON object with a status, or its status is
        not a final one (FINAL) or differs from its record's. Such a row does not count as stored: `run` trains its
        model again and replaces it, `report` leaves it out, `salvage` copies what can be read of it."""
        return self._scan()[1]

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    def records(self) -> list[dict]:
        """Every stored model's record (config, status, losses, measures, timings, versions), with 'key', its
        columns under their names now (records.current). A damaged row (damaged()) is left out with one warning
        naming it, and listed in .skipped."""
        out, self.skipped = [], []
        for key, status, rec in self.db.execute("SELECT key, status, record FROM runs ORDER BY rowid"):
            why = row_problem(status, rec)
            if why is None:
                out.append({**records.current(parse_record(rec, "status")), "key": key})
            else:
                self.skipped.append((key, why))
        if self.skipped:
            warn(f"{self.path}: left out {len(self.skipped)} damaged model row(s): {_keys(self.skipped)}; "
                 f"`smoothness salvage {self.path} NEWDIR` copies the sound rows into a new store")
        return out

    def values_of(self, field: str) -> dict:
        """key -> the value of `field` in the record of each stored model, and of each trained one waiting to be
        measured, whose record holds it (quietly skipping rows that cannot be read: records() names those)."""
        out = {}
        for key, text in self.db.execute("SELECT key, record FROM trained UNION ALL SELECT key, record FROM runs"):
            try:
                rec = parse_record(text)
            except ValueError:
                continue
            if rec.get(field) is not None:
                out[key] = rec[field]
        return out

    def frame(self):
        """The records as a pandas DataFrame (records.frame: one row per model; pair as 'a/b')."""
        return records.frame(self.records())

    def params(self, key: str) -> Stack:
        """The trained weights of model key, a stack of one: an MLPStack for the paper's MLP, a ParamStack for other
        families; a StoreError if the store holds none."""
        row = self.db.execute("SELECT state FROM weights WHERE key=?", (key,)).fetchone()
        if row is None:
            raise StoreError(f"no stored weights for model {key}")
        try:
            return _params(row[0])
        except Exception as e:  # noqa: BLE001 - whatever a damaged blob makes torch.load raise
            raise StoreError(f"{self.path}: the stored weights of model {key} are unreadable ({e})") from None


def export(source, dest, weights: bool = False) -> int:
    """Copy the store `source` (a directory or file) into the single file `dest` (a new file; no WAL side files),
    without the trained weights unless weights=True: a compact copy to share or to put under version control while
    a grid still writes the source (SQLite's online backup reads a consistent snapshot). Returns the models copied."""
    if not str(dest).strip() or str(dest).endswith(("/", os.sep)):
        raise StoreError(f"export to {str(dest)!r}: give the name of a new file (such as results/my-grid.sqlite), "
                         "not a folder")
    src = Store(source, create=False)
    dest = Path(dest)
    if dest.exists():
        src.close()
        raise StoreError(f"{dest} exists: export into a new file")
    if not dest.parent.is_dir():
        src.close()
        raise StoreError(f"cannot export to {dest}: the folder {dest.parent} does not exist")
    try:
        out = sqlite3.connect(str(dest), isolation_level=None)
        try:
            src.db.backup(out)
            if not weights:
                out.execute("DELETE FROM weights")
                if out.execute("SELECT 1 FROM sqlite_master WHERE name='trained'").fetchone():
                    out.execute("DELETE FROM trained")
            out.execute("PRAGMA journal_mode=DELETE")
            out.execute("VACUUM")
            n = out.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        finally:
            out.close()
    except sqlite3.DatabaseError as e:
        dest.unlink(missing_ok=True)
        raise StoreError(f"cannot export {src.path} to {dest} ({e})") from None
    finally:
        src.close()
    return n


def _keys(bad: list[tuple[str, str]], most: int = 10) -> str:
    """Keys with their problems, for a warning: the first `most`, then how many more."""
    s = "; ".join(f"{k} ({why})" for k, why in bad[:most])
    return s + (f"; and {len(bad) - most} more" if len(bad) > most else "")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _blob(params: Stack) -> bytes:
    buf = io.BytesIO()
    torch.save(params.state_dict(), buf)
    return buf.getvalue()


def _params(blob: bytes):
    return stack_from_state(torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True))
