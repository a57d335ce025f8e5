"""The results store under faults: interrupts in a commit, bad --out paths, damaged rows and files, read-only
stores, another grid's store, dotted directory names, failed runs."""
import hashlib
import os
import sqlite3

import pytest

from conftest import count_rows, damage_store, run_cli, tiny
from smoothness.cli import commands as cli
from smoothness.errors import ConfigError, DataError, StoreError
from smoothness.experiments.running import runner as experiments
from smoothness.experiments.storage import opening
from smoothness.experiments.storage import store as store_mod
from smoothness.experiments.storage.salvage import salvage
from smoothness.experiments.storage.store import Store
from smoothness.models import init_mlp

ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


def _main(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error(code, err, *words):
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smoothness: error:"), err
    for w in words:
        assert w in lines[0], (w, err)
    return lines[0]


# -- 1: an interrupt anywhere in a commit --------------------------------------------------------------------
class Interrupting:
    """A connection that raises KeyboardInterrupt once, just before or just after running the statement that
    starts with `target` (as Ctrl-C lands between two statements); everything else goes to the real one."""

    def __init__(self, db, target, when):
        self._db, self._target, self._when, self.fired = db, target, when, False

    def __getattr__(self, name):
        return getattr(self._db, name)

    def _run(self, run, sql, *args):
        hit = not self.fired and sql.lstrip().upper().startswith(self._target)
        if hit and self._when == "before":
            self.fired = True
            raise KeyboardInterrupt
        out = run(sql, *args)
        if hit and self._when == "after":
            self.fired = True
            raise KeyboardInterrupt
        return out

    def execute(self, sql, *args):
        return self._run(self._db.execute, sql, *args)

    def cursor(self):
        cur, conn = self._db.cursor(), self

        class Cursor:
            def __getattr__(self, name):
                return getattr(cur, name)

            def execute(self, sql, *args):
                conn._run(cur.execute, sql, *args)
                return self
        return Cursor()


STATEMENTS = ["BEGIN", "INSERT OR IGNORE INTO RUNS", "INSERT OR REPLACE INTO WEIGHTS", "DELETE FROM TRAINED", "COMMIT"]


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("target", STATEMENTS)
def test_an_interrupt_anywhere_in_a_commit_leaves_it_done_or_undone(tmp_path, target, when):
    p = init_mlp([3], (4, 5, 1), 1.0)
    rec = {"data": "mnist5k", "pair": (3, 8), "n_train": 64, "seed": 3, "regularizer": "none", "lam": 0.0,
           "lr": 0.01, "status": "converged", "epochs": 10}
    with Store(tmp_path) as st:
        st.add_trained("k1", rec, p)
        real = st.db
        st.db = Interrupting(real, target, when)
        with pytest.raises(KeyboardInterrupt):        # never sqlite3.OperationalError (rollback after commit)
            st.add("k1", rec, p)
        assert st.db.fired
        st.db = real
        assert not real.in_transaction                # no transaction left open
        committed = target == "COMMIT" and when == "after"
        path = tmp_path / Store.FILENAME
        assert (count_rows(path), count_rows(path, "weights"), count_rows(path, "trained")) == ((1, 1, 0) if committed
                                                                                  else (0, 0, 1))
        assert st.add("k1", rec, p) is not committed  # the store goes on working
        assert (count_rows(path), count_rows(path, "weights"), count_rows(path, "trained")) == (1, 1, 0)


class InterruptingTwice(Interrupting):
    """Interrupts once more, just before the ROLLBACK that the first interrupt leads to."""

    def _run(self, run, sql, *args):
        if sql == "ROLLBACK":
            raise KeyboardInterrupt
        return super()._run(run, sql, *args)


def test_an_interrupt_during_the_rollback_is_undone_by_close(tmp_path):
    p = init_mlp([3], (4, 5, 1), 1.0)
    st = Store(tmp_path)
    real = st.db
    st.db = InterruptingTwice(real, "INSERT OR IGNORE INTO RUNS", "after")
    with pytest.raises(KeyboardInterrupt):
        st.add("k1", {"status": "converged"}, p)
    st.db = real
    st.close()                                        # rolls back what the interrupted rollback left open
    assert count_rows(tmp_path / Store.FILENAME) == 0


# -- 2: --out at a file, or where nothing can be written -----------------------------------------------------
def test_out_at_a_file_or_under_one_is_one_error_line(exp, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    _one_error(*_main(capsys, "run", "smoke", "--out", f, "--device", "cpu")[::2], str(f), "a file")
    _one_error(*_main(capsys, "run", "smoke", "--out", f / "sub", "--device", "cpu")[::2], str(f / "sub"))
    _one_error(*_main(capsys, "report", exp, "--out", f)[::2], str(f), "not a directory")
    _one_error(*_main(capsys, "report", exp, "--out", f / "sub")[::2], str(f / "sub"))
    _one_error(*_main(capsys, "run", "smoke", "--out", f, "--dry-run")[::2], str(f))
    assert f.read_text() == "x"


def test_out_in_an_unwritable_folder_is_one_error_line(exp, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    if not ROOT_USER:   # a real read-only folder (root writes through chmod, so it gets the same error injected)
        locked.chmod(0o555)
    else:
        real = type(locked).mkdir

        def mkdir(self, *a, **kw):
            if str(self).startswith(str(locked)):
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *a, **kw)
        monkeypatch.setattr(type(locked), "mkdir", mkdir)
    try:
        _one_error(*_main(capsys, "run", "smoke", "--out", locked / "a" / "b", "--device", "cpu")[::2],
                   str(locked / "a"), "Permission denied")
        _one_error(*_main(capsys, "report", exp, "--out", locked / "rep")[::2], str(locked / "rep"),
                   "Permission denied")
    finally:
        locked.chmod(0o755)


# -- 3: damaged rows, damaged blobs, damaged files -----------------------------------------------------------
def test_unreadable_records_are_skipped_with_a_warning_and_counted(exp, capsys):
    db = sqlite3.connect(str(exp / Store.FILENAME))
    keys = [k for (k,) in db.execute("SELECT key FROM runs ORDER BY rowid")]
    db.execute("UPDATE runs SET record='null' WHERE key=?", (keys[0],))
    db.commit()
    db.close()
    with Store(exp, create=False) as st:
        assert [r["key"] for r in st.records()] == keys[1:] and [k for k, _ in st.skipped] == keys[:1]
    assert keys[0] in capsys.readouterr().err
    for bad in ("{not json", "[1, 2]"):
        db = sqlite3.connect(str(exp / Store.FILENAME))
        db.execute("UPDATE runs SET record=? WHERE key=?", (bad, keys[1]))
        db.commit()
        db.close()
        code, out, err = _main(capsys, "report", exp)
        assert code == 0, err
        assert err.count("smoothness: warning:") == 1 and keys[0] in err and keys[1] in err, err
        md = (exp / "report" / "report.md").read_text()
        assert "0 models in" in md and "2 more stored row(s) could not be read" in md and keys[1] in md


def test_a_bad_trained_blob_is_discarded_and_its_model_trained_again(exp, capsys):
    db = sqlite3.connect(str(exp / Store.FILENAME))
    (key, rec), = db.execute("SELECT key, record FROM runs ORDER BY rowid LIMIT 1")
    db.execute("DELETE FROM weights WHERE key=?", (key,))
    db.execute("DELETE FROM runs WHERE key=?", (key,))
    db.execute("INSERT INTO trained VALUES (?, 'now', ?, ?)", (key, rec, b"not a torch file"))
    db.execute("INSERT INTO trained VALUES ('other', 'now', 'null', ?)", (b"",))
    db.commit()
    db.close()
    s = experiments.run_grid(tiny(), exp, device="cpu", progress=False)
    assert (s.trained, s.stored_before) == (1, 1)
    err = capsys.readouterr().err
    assert "warning" in err and key in err and "trained again" in err, err
    assert count_rows(exp / Store.FILENAME) == 2 and count_rows(exp / Store.FILENAME, "trained") == 0
    with Store(exp, create=False) as st:
        assert st.params(key).widths == (784, 8, 1)


def test_a_damaged_store_is_refused_with_the_file_and_a_way_to_recover(exp, tmp_path, capsys):
    path = exp / Store.FILENAME
    damage_store(path)
    db = sqlite3.connect(str(path))
    assert db.execute("PRAGMA integrity_check").fetchone()[0] != "ok"
    assert len(db.execute("SELECT record FROM runs").fetchall()) == 2     # what the report read before
    db.close()
    line = _one_error(*_main(capsys, "report", exp)[::2], str(path), "damaged", "salvage")
    assert "2 model row(s) can be read" in line
    assert not (exp / "report").exists()
    _one_error(*_main(capsys, "compare", exp, exp)[::2], str(path), "damaged")
    copied, lost, _ = salvage(exp, tmp_path / "new")      # what the message tells to do
    assert copied + lost == 2 and copied >= 1
    assert _main(capsys, "report", tmp_path / "new")[0] == 0
    s = experiments.run_grid(tiny(), tmp_path / "new", device="cpu", progress=False)
    assert s.stored_before == copied and s.trained == 2 - copied
    damage_store(path, whole=True)                              # the runs table itself: nothing of it is readable
    _one_error(*_main(capsys, "report", exp)[::2], str(path), "damaged", "0 model row(s)")


# -- 4: read-only stores --------------------------------------------------------------------------------------
def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_reading_needs_no_write_access(exp, tmp_path, capsys):
    path = exp / Store.FILENAME
    before = _digest(path)
    with Store(exp, create=False) as st:
        assert len(st.records()) == 2
        with pytest.raises(sqlite3.OperationalError, match="readonly"):    # opened read-only (URI mode=ro)
            st.db.execute("DELETE FROM runs")
    path.chmod(0o444)
    exp.chmod(0o555)     # a read-only folder too: no -shm can be made (for root, only the URI mode protects)
    try:
        code, out, err = _main(capsys, "report", exp, "--out", tmp_path / "rep")
        assert code == 0, err
        assert (tmp_path / "rep" / "report.html").exists()
        code, out, err = _main(capsys, "compare", exp, exp)
        assert code == 0 and "status equal for 2 of 2" in out, err
        if not ROOT_USER:   # the default report folder beside the store cannot be written: say where instead
            _one_error(*_main(capsys, "report", exp)[::2], str(exp / "report"), "--out")
    finally:
        exp.chmod(0o755)
        path.chmod(0o644)
    assert _digest(path) == before


def test_a_wal_store_in_a_read_only_place_is_read_as_immutable(exp, monkeypatch):
    """Where SQLite cannot create the -shm file it refuses a plain read-only open of a WAL store (as for a user
    without write access to the folder); the store is then read as immutable, unless a WAL journal holds
    commits not yet in the file."""
    real = opening.connect_read_only

    def connect(path, immutable=False):
        if not immutable:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return real(path, immutable)
    monkeypatch.setattr(opening, "connect_read_only", connect)
    with Store(exp, create=False) as st:
        assert len(st.records()) == 2
    (exp / (Store.FILENAME + "-wal")).write_bytes(b"\0" * 100)
    with pytest.raises(StoreError, match="copy the directory somewhere writable"):
        Store(exp, create=False)


def test_an_empty_file_is_not_made_a_store_by_reading_it(tmp_path, capsys):
    f = tmp_path / "empty.sqlite"
    f.write_bytes(b"")
    _one_error(*_main(capsys, "report", f)[::2], str(f), "holds no results")
    _one_error(*_main(capsys, "compare", f, f)[::2], str(f), "holds no results")
    assert f.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["empty.sqlite"]
    sqlite3.connect(str(tmp_path / "blank.sqlite")).execute("PRAGMA user_version=1").connection.close()
    with pytest.raises(DataError, match="holds no results"):
        Store(tmp_path / "blank.sqlite", create=False)


# -- 5: another grid's store ------------------------------------------------------------------------------------
def test_another_grids_store_is_refused_unless_merged(exp, capsys):
    other = tiny(name="other", seeds=[1], description="Other models.")
    with pytest.raises(ConfigError, match="holds grid 'tiny'.*grid 'other'.*--merge"):
        experiments.run_grid(other, exp, device="cpu", progress=False)
    assert count_rows(exp / Store.FILENAME) == 2
    code, out, err = _main(capsys, "run", "smoke", "--out", exp, "--device", "cpu")
    _one_error(code, err, "'tiny'", "'smoke'", "--merge")
    s = experiments.run_grid(other, exp, device="cpu", progress=False, merge=True)
    assert (s.trained, s.stored_before) == (2, 0)
    assert _main(capsys, "report", exp)[0] == 0
    md = (exp / "report" / "report.md").read_text()
    assert "tiny + other" in md and "Two tiny models." in md and "Other models." in md and "4 models in" in md
    for cmd in ("run", "reproduce"):
        assert "--merge" in run_cli(cmd, "--help").stdout


# -- 6: --out is always a directory -------------------------------------------------------------------------------
def test_a_dotted_out_is_a_directory(tmp_path, capsys):
    out = tmp_path / "runs" / "exp.v2"
    experiments.run_grid(tiny(), out, device="cpu", progress=False)
    assert out.is_dir() and (out / Store.FILENAME).is_file()
    assert _main(capsys, "report", out)[0] == 0
    assert (out / "report" / "report.html").is_file() and not (tmp_path / "runs" / "report").exists()
    with Store(out, create=False) as st:
        assert st.path == out / Store.FILENAME
    assert store_mod.store_path(tmp_path / "x.sqlite") == tmp_path / "x.sqlite"    # a store file by its name


# -- 7: a failed run leaves nothing behind --------------------------------------------------------------------
def test_a_run_that_fails_before_storing_a_model_leaves_no_store(tmp_path, monkeypatch):
    out = tmp_path / "a" / "b"

    def fail(*a, **kw):
        raise DataError("no data")
    monkeypatch.setattr(experiments, "check_data", fail)
    with pytest.raises(DataError):
        experiments.run_grid(tiny(), out, device="cpu", progress=False)
    assert not (tmp_path / "a").exists()
    (tmp_path / "kept").mkdir()
    monkeypatch.setattr(experiments, "check_data", lambda *a, **kw: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        experiments.run_grid(tiny(), tmp_path / "kept", device="cpu", progress=False)
    assert list((tmp_path / "kept").iterdir()) == []      # the folder was there before: it stays, empty


def test_a_run_without_its_data_files_leaves_no_store(tmp_path):
    env = {"HOME": str(tmp_path), "SMOOTHNESS_DATA": str(tmp_path / "none"), "XDG_CACHE_HOME": str(tmp_path)}
    r = run_cli("reproduce", "--preset", "paper-table1", "--out", tmp_path / "o", "--data-dir", tmp_path / "none",
                env=env)
    assert r.returncode == 2 and "download" in r.stderr
    assert not (tmp_path / "o").exists()
