"""The SQLite file under a results store: creating its schema, connecting read-only, checking that a file is a
results store (its tables, its schema, SQLite's integrity check), telling a deleted or replaced file, waiting out
another process's lock, turning SQLite's failures into one line that says what is wrong and what is kept, and
reading a model row's record or telling that the row is damaged (store.py uses these)."""
from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

from smoothness.errors import StoreError

SCHEMA_VERSION = 1
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
# The columns of each table, as the store's schema creates them: a store whose tables differ is not written to (a
# foreign SQLite file, or one whose tables were changed by hand, would fail only at the first insert, after training).
COLUMNS = {"runs": ["key", "finished_at", "data", "pair_a", "pair_b", "n_train", "seed", "regularizer", "lam", "lr",
                    "status", "epochs", "record"],
           "weights": ["key", "state"], "meta": ["name", "value"],
           "trained": ["key", "finished_at", "record", "state"]}


def model_count(db: sqlite3.Connection) -> int:
    """Models a store holds: measured (table runs) and trained but not yet measured (table trained)."""
    return db.execute("SELECT (SELECT COUNT(*) FROM runs) + (SELECT COUNT(*) FROM trained)").fetchone()[0]


def connect_read_only(path: Path, immutable: bool = False) -> sqlite3.Connection:
    """A read-only connection to the SQLite file `path` (immutable: without the WAL's -shm file), opened for
    real (SQLite opens lazily: the first read finds the problems)."""
    # the path's bytes (os.fsencode): a non-ASCII name under LC_ALL=C holds surrogates that str.encode refuses
    uri = "file:" + quote(os.fsencode(Path(path).resolve())) + "?mode=ro" + ("&immutable=1" if immutable else "")
    db = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None)
    try:
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except BaseException:
        db.close()
        raise
    return db


def cannot_write(e: sqlite3.Error) -> bool:
    """Whether SQLite failed for want of write access (not because the file is bad)."""
    name = getattr(e, "sqlite_errorname", "")
    return (isinstance(e, sqlite3.OperationalError) and name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN",
                                                                         "SQLITE_PERM"))
            or any(s in str(e) for s in ("readonly", "read-only", "unable to open")))


LOCK_TIMEOUT = 60.0   # seconds a write waits for another process's write transaction before giving up


def busy(e: BaseException) -> bool:
    """Whether SQLite gave up on a lock that another connection holds (SQLITE_BUSY)."""
    return isinstance(e, sqlite3.OperationalError) and (
        getattr(e, "sqlite_errorname", "").startswith("SQLITE_BUSY") or "database is locked" in str(e))


def retry_busy(step, timeout: float):
    """step(), tried again while another connection holds the lock, for up to `timeout` seconds. SQLite's own
    wait (the connection's timeout) does not cover every case: where waiting could deadlock, as when processes
    create one store at the same moment (before it is in WAL mode), SQLite answers SQLITE_BUSY at once. The step
    must be safe to repeat (an autocommit statement, or a BEGIN)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return step()
        except sqlite3.OperationalError as e:
            if not busy(e) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.01, 0.1))


def file_identity(path: Path):
    """(device, inode) of the file at path, or None if there is none: tells a deleted or replaced file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_tables(path: Path, db: sqlite3.Connection) -> bool:
    """Whether the SQLite file holds tables (a store written before); a StoreError if it holds tables that are not
    a results store's, or a results store's tables with other columns."""
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
              if not r[0].startswith("sqlite_")]
    foreign = [t for t in tables if t not in COLUMNS]
    if foreign or tables and "runs" not in tables:
        raise StoreError(f"{path} is an SQLite database but not a results store (its tables: "
                         f"{', '.join(tables)}): choose another --out")
    for t in tables:
        cols = [r[1] for r in db.execute(f"PRAGMA table_info({t})")]
        if cols != COLUMNS[t]:
            raise StoreError(f"{path}: table {t} has the columns {', '.join(cols)}, not those of a results store "
                             f"({', '.join(COLUMNS[t])}); it is not written to. Copy its models into a new store "
                             f"with `smoothness salvage {path} NEWDIR`")
    return bool(tables)


def write_failure(path: Path, db: sqlite3.Connection | None, e: sqlite3.DatabaseError, what: str) -> str:
    """One line for SQLite failing to open or write the store: a full disk, a lock held by another process, missing
    write access, damage; with what the store still holds."""
    text = str(e)
    name = getattr(e, "sqlite_errorname", "")
    held = ""
    if db is not None:
        try:
            held = f"; the {model_count(db)} model(s) committed before are kept"
        except sqlite3.DatabaseError:
            pass
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if name == "SQLITE_FULL" or "disk is full" in text or (("disk I/O" in text or name.startswith("SQLITE_IOERR"))
                                                           and free is not None and free < (1 << 20)):
        room = f" ({free:,} bytes free on its disk)" if free is not None else ""
        return (f"no space left to write {what} to the results store {path}{room}{held}: free some space and run "
                "the same command again to resume")
    if name == "SQLITE_BUSY" or "locked" in text:
        return (f"the results store {path} is locked by another process (a run or an SQLite client holding a write "
                f"transaction) for more than {LOCK_TIMEOUT:.0f} s{held}: let it finish, or close it, and run the "
                "same command again")
    if cannot_write(e):
        return f"cannot write the results store {path} ({e}): choose a directory you can write (--out DIR)"
    if "not a database" in text or name == "SQLITE_NOTADB":
        return f"{path} is not a readable results store ({e})"
    if "malformed" in text or name == "SQLITE_CORRUPT":
        return damaged(path, db, text) if db is not None else f"{path} is not a readable results store ({e})"
    return f"cannot write {what} to the results store {path} ({e}){held}"


def check_schema(path: Path, version) -> None:
    if str(version) != str(SCHEMA_VERSION):
        raise StoreError(f"{path}: results store schema {version}, this version reads {SCHEMA_VERSION}")


def damaged(path: Path, db: sqlite3.Connection, why: str) -> str:
    """The error for a store that fails SQLite's integrity check: what is wrong, how many model rows can still
    be read, and how to keep them."""
    n = 0
    try:
        for _ in db.execute("SELECT key, record FROM runs"):
            n += 1
    except sqlite3.Error:
        pass
    why = "; ".join(line for line in str(why).splitlines() if line.strip() and not line.startswith("***"))
    return (f"{path} is damaged (SQLite integrity check: {why[:160]}); {n} model row(s) can be read in a plain "
            f"scan: copy every readable one into a new store with `smoothness salvage {path} NEWDIR`, then "
            "`smoothness run GRID --out NEWDIR` trains only the models lost")


def prepare(path: Path, db: sqlite3.Connection) -> None:
    """Check an existing store (tables, damage, schema version) or create one, in WAL mode; every step is an
    autocommit statement, so that the whole can be tried again while another process holds the lock."""
    existing = check_tables(path, db)
    if existing:   # a store written before: refuse a damaged one before any work (salvage instead)
        problems = [r[0] for r in db.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise StoreError(damaged(path, db, "; ".join(problems)))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(_SCHEMA)
    row = db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
    if row is None:
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
    else:
        check_schema(path, row[0])


def parse_record(text, *required) -> dict:
    """A stored record: a JSON object (with the fields `required`), else ValueError."""
    try:
        rec = json.loads(text)
    except (TypeError, ValueError) as e:
        raise ValueError(f"record is not JSON ({getattr(e, 'msg', str(e))[:60]})") from None
    if not isinstance(rec, dict):
        kind = {type(None): "null", list: "an array", str: "a string", bool: "a boolean"}.get(type(rec), "a number")
        raise ValueError(f"record is {kind}, not a JSON object")
    missing = [f for f in required if f not in rec]
    if missing:
        raise ValueError(f"record lacks {', '.join(missing)}")
    return rec


FINAL = ("converged", "not_converged", "diverged")   # the statuses a stored model ends with (training.state)


def row_problem(status, text) -> str | None:
    """What makes a model row damaged (its status column and record text), or None for a sound row."""
    try:
        rec = parse_record(text, "status")
    except ValueError as e:
        return str(e)
    if rec["status"] not in FINAL:
        return f"status {str(rec['status'])[:40]!r} is not one of {', '.join(FINAL)}"
    if status != rec["status"]:
        return f"status column {str(status)[:40]!r} differs from the record's {rec['status']!r}"
    return None
