"""Finding and opening a results store's file: which file a path names (store_path), a connection that writes it
(creating the directory and the store as needed: running a grid) and a read-only one that checks it first (report,
compare, dry runs). Each refuses what is not a sound results store with one error naming the file; store.Store
opens its file through these."""
from __future__ import annotations

import os
import sqlite3
import stat
import tempfile
from pathlib import Path

from smoothness.errors import StoreError
from smoothness.experiments.storage.storefile import (
    LOCK_TIMEOUT,
    cannot_write,
    check_schema,
    connect_read_only,
    damaged,
    prepare,
    retry_busy,
    write_failure,
)

FILENAME = "results.sqlite"   # the store file of an experiment directory


def store_path(path) -> Path:
    """The store file of `path`: `path/results.sqlite` for an experiment directory. An existing file, or a
    name ending in .sqlite that is not a directory, is the store file itself; any other name is a directory,
    dots and all (`runs/exp.v2` is the directory exp.v2)."""
    path = Path(path)
    try:   # one look at the file: another process may create the directory between two
        is_dir, exists = stat.S_ISDIR(path.stat().st_mode), True
    except OSError:
        is_dir = exists = False
    if path.name == FILENAME or not is_dir and (exists or path.suffix == ".sqlite"):
        return path   # results.sqlite is the store file, even where it is a folder (refused when opened)
    return path / FILENAME


def _where(path: Path) -> Path:
    """The store file's folder, one StoreError where it or the file is of the wrong kind."""
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise StoreError(f"{folder} is a file, not a directory: the results store needs a directory")
    if path.is_dir():
        raise StoreError(f"{path} is a folder, not a results store file: remove or rename it, or choose another "
                         "--out")
    return folder


def _writable(folder: Path, path: Path) -> None:
    """A StoreError where the existing folder, or the store file in it, may not be written."""
    if not os.access(folder, os.W_OK | os.X_OK) or path.exists() and not os.access(path, os.W_OK):
        raise StoreError(f"cannot write the results store {path} (permission denied): choose a directory you "
                         "can write (--out DIR)")


def check_writable(path: Path) -> None:
    """What open_for_writing would refuse about where the store file `path` goes, found without creating it (a
    dry run): a folder that cannot be created is found by creating and removing an empty one where it would go."""
    folder = _where(path)
    if folder.is_dir():
        _writable(folder, path)
        return
    above = folder.absolute()
    while not above.exists():
        above = above.parent
    try:
        if not above.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(above))
        os.rmdir(tempfile.mkdtemp(prefix=".smoothness-check-", dir=above))
    except OSError as e:
        raise StoreError(f"cannot create the directory {folder} for the results store: "
                         f"{e.strerror or e}") from None


def open_for_writing(path: Path) -> sqlite3.Connection:
    """A connection that writes the store file `path`, created (with its directory) if need be; one StoreError
    where the directory or the file cannot be written, or the file is not a sound results store."""
    folder = _where(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the directory {folder} for the results store: "
                         f"{e.strerror or e}") from None
    _writable(folder, path)
    db = None
    try:
        db = sqlite3.connect(str(path), timeout=LOCK_TIMEOUT, isolation_level=None)
        retry_busy(lambda: prepare(path, db), LOCK_TIMEOUT)
    except BaseException as e:
        if db is not None:
            msg = write_failure(path, db, e, "open") if isinstance(e, sqlite3.DatabaseError) else None
            db.close()
            if msg:
                raise StoreError(msg) from None
        elif isinstance(e, sqlite3.DatabaseError):
            raise StoreError(write_failure(path, None, e, "open")) from None
        raise
    return db


def open_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to the existing store file `path`: nothing is written to it and it needs no write
    access; one StoreError naming the file where it is missing, empty, not a results store, of another schema or
    fails SQLite's integrity check."""
    if not path.exists():
        raise StoreError(f"no results store at {path} (run a grid first: smoothness run GRID --out DIR)")
    if path.is_dir():
        raise StoreError(f"{path} is a folder, not a results store file")
    if path.is_file() and path.stat().st_size == 0:
        raise StoreError(f"{path} is an empty file: it holds no results (run a grid first: smoothness run "
                         "GRID --out DIR)")
    db = None
    try:
        try:
            db = connect_read_only(path)
        except sqlite3.OperationalError as e:
            if not cannot_write(e):
                raise
            # A WAL store where this user cannot create its -shm file (a read-only folder): SQLite reads it
            # only as immutable, which is right unless a WAL journal holds commits not yet in the file.
            wal = Path(f"{path}-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise StoreError(f"cannot read {path} without write access to {path.parent}: its journal "
                                 f"{wal.name} holds commits not yet in the file; copy the directory somewhere "
                                 "writable and read the copy") from None
            db = connect_read_only(path, immutable=True)
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            raise StoreError(f"{path} holds no results (an empty SQLite database, not a results store)")
        if "runs" not in tables:
            raise StoreError(f"{path} is not a results store (it has no table 'runs')")
        if "meta" in tables:
            row = db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
            if row is not None:
                check_schema(path, row[0])
        try:
            problems = [r[0] for r in db.execute("PRAGMA integrity_check(3)")]
        except sqlite3.DatabaseError as e:
            problems = [str(e)]
        if problems != ["ok"]:
            raise StoreError(damaged(path, db, "; ".join(line for p in problems for line in str(p).splitlines()
                                                           if not line.startswith("***"))))
    except BaseException as e:
        msg = None
        if isinstance(e, sqlite3.DatabaseError):
            msg = (damaged(path, db, str(e)) if db is not None and "malformed" in str(e)
                   else f"{path} is not a readable results store ({e})")
        if db is not None:
            db.close()
        if msg:
            raise StoreError(msg) from None
        raise
    return db
