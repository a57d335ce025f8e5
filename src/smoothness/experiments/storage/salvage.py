"""Copy what can still be read from a damaged results store into a new one.

A store that fails SQLite's integrity check (pages overwritten on disk, say) is refused by `report` and
`compare`. `smoothness salvage DAMAGED NEWDIR` copies every model row (and its weights) that
can still be read into NEWDIR/results.sqlite; `smoothness run GRID --out NEWDIR` then trains only the
models that were lost. Rows are read one rowid at a time, so a damaged page loses the rows on it, not
every row after it (as a plain scan, or `sqlite3 .dump`, would).
"""
from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from smoothness.errors import SmoothnessError, StoreError
from smoothness.experiments.storage.store import Store, store_path
from smoothness.experiments.storage.storefile import connect_read_only, row_problem

_GAP = 1000   # rowids probed past the last readable row when the largest rowid cannot be read


def _rows(db: sqlite3.Connection, table: str, cols: str):
    """The rows of table that can be read, each looked up by rowid (unreadable ones are passed over)."""
    try:
        hi = db.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0
    except sqlite3.DatabaseError:
        hi = None
    rowid, last = 0, 0
    while (rowid < hi) if hi is not None else (rowid - last < _GAP):
        rowid += 1
        try:
            row = db.execute(f"SELECT {cols} FROM {table} WHERE rowid=?", (rowid,)).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row is not None:
            last = rowid
            yield row


def salvage(source, dest) -> tuple[int, int, int]:
    """Copy the readable model rows, weights and meta of the store `source` (directory or file) into a new
    store in the directory `dest`; returns (models copied, model rows that could not be read, models copied
    with their weights)."""
    src = store_path(source)
    if not src.exists():
        raise StoreError(f"no results store at {src}")
    out = Path(dest) / Store.FILENAME
    if out.exists():
        raise StoreError(f"{out} exists: salvage into a new directory")
    try:
        db = connect_read_only(src)
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{src} cannot be opened at all ({e}): nothing can be salvaged") from None
    copied, bad, weights, keys = 0, 0, 0, set()
    try:
        try:
            total = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        except sqlite3.DatabaseError:
            total = None   # a damaged table may not be countable
        with Store(out) as new:
            for name, value in _rows(db, "meta", "name, value"):
                if name != "schema":
                    new.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))
            for row in _rows(db, "runs", "*"):
                if row_problem(row[10], row[-1]) is not None:   # damaged (Store.damaged): its model is trained again
                    bad += 1
                    continue
                new.db.execute("INSERT OR IGNORE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
                keys.add(row[0])
                copied += 1
            for key, state in _rows(db, "weights", "key, state"):
                if key in keys:
                    weights += new.db.execute("INSERT OR IGNORE INTO weights VALUES (?, ?)", (key, state)).rowcount
    finally:
        db.close()
    return copied, max(total - copied, bad) if total is not None else bad, weights


def main(argv=None) -> int:
    """`python -m smoothness.experiments.storage.salvage`: copy the readable rows of a damaged store into a new one."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m smoothness.experiments.storage.salvage DAMAGED_STORE NEWDIR", file=sys.stderr)
        return 2
    try:
        copied, lost, weights = salvage(*args)
    except SmoothnessError as e:
        print(f"smoothness: error: {e}", file=sys.stderr)
        return 2
    print(f"copied {copied} model(s), {weights} with weights, into {Path(args[1]) / Store.FILENAME}; {lost} could "
          "not be read "
          f"(`smoothness run GRID --out {args[1]}` trains them again)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
