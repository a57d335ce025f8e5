"""The results store: one durable row per finished model, no duplicates, resume after kill -9."""
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

from conftest import run_cli, run_cli_tty
from smoothness.errors import DataError
from smoothness.experiments.configuration import grid
from smoothness.experiments.storage.store import Store
from smoothness.models import init_mlp


def test_add_is_durable_idempotent_and_round_trips(tmp_path):
    p = init_mlp([3], (4, 5, 1), 1.0)
    with Store(tmp_path) as st:
        rec = {"data": "mnist5k", "pair": (3, 8), "n_train": 64, "seed": 3, "regularizer": "none", "lam": 0.0,
               "lr": 0.01, "status": "converged", "epochs": 10, "gradient_norm": float("nan"), "x": 1.5}
        assert st.add("k1", rec, p)
        assert not st.add("k1", {**rec, "epochs": 99}, p)      # a second insert of the key is a no-op
        # committed: another connection sees the row at once
        other = sqlite3.connect(str(tmp_path / Store.FILENAME))
        assert other.execute("SELECT COUNT(*), epochs FROM runs").fetchone() == (1, 10)
        other.close()
        (r,) = st.records()
        assert r["key"] == "k1" and r["pair"] == [3, 8] and r["gradient_norm"] is None and r["x"] == 1.5
        assert r["versions"]["torch"] == torch.__version__
        q = st.params("k1")
        assert all(torch.equal(a, b) for a, b in zip(q.tensors(), p.tensors()))
        df = st.frame()
        assert df.loc[0, "pair"] == "3/8" and df["gradient_norm"].isna().all()


def test_a_measure_stored_under_its_old_name_is_read_under_its_name_now(tmp_path):
    """The minibatch gradient norm was stored as minibatch_grad_norm (the committed stores hold it so): records,
    frame and the learning-rate sweep's table read it as minibatch_gradient_norm. The unregularized records of a
    committed store, stored again through Store.add as they were written."""
    import json

    import numpy as np

    from conftest import ROOT
    from smoothness.analysis import series
    from smoothness.experiments.storage import records
    from smoothness.measures import registry
    from smoothness.report.format import lr_sweep_tables
    db = sqlite3.connect(f"file:{ROOT / 'results' / '2026-12-02-quick.sqlite'}?mode=ro", uri=True)
    old = [json.loads(r) for (r,) in db.execute("SELECT record FROM runs WHERE regularizer='none' ORDER BY rowid")]
    db.close()
    assert len({r["lr"] for r in old}) > 1
    assert all("minibatch_grad_norm" in r and "minibatch_gradient_norm" not in r for r in old)
    values = [r["minibatch_grad_norm"] for r in old]
    assert any(v is not None for v in values)
    with Store(tmp_path) as st:
        for i, r in enumerate(old):
            assert st.add(f"k{i}", r)
        got, df = st.records(), st.frame()
    assert [r["minibatch_gradient_norm"] for r in got] == values and not any("minibatch_grad_norm" in r for r in got)
    assert "minibatch_grad_norm" not in df
    np.testing.assert_array_equal(df["minibatch_gradient_norm"].to_numpy(float),
                                  np.array([np.nan if v is None else v for v in values]))
    label = registry.BY_KEY["minibatch_gradient_norm"].label
    tabs = lr_sweep_tables(series.by_lr(df))
    assert tabs and all(label in t.headers for t in tabs)
    shown = [r[t.headers.index(label)] for t in tabs for r in t.rows]
    assert shown and all(c != "–" for c in shown), shown
    # every column beside it too; a column under its name now wins over its old one
    assert records.current({"minibatch_grad_norm_train_se": 1.0, "x": 2}) == {"minibatch_gradient_norm_train_se": 1.0,
                                                                               "x": 2}
    assert records.current({"minibatch_grad_norm": 1.0, "minibatch_gradient_norm": 3.0}) == {
        "minibatch_gradient_norm": 3.0}


def test_missing_and_corrupt_stores_give_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="no results store"):
        Store(tmp_path / "none", create=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / Store.FILENAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DataError, match="not a readable results store"):
        Store(bad)
    r = run_cli("report", bad)
    assert r.returncode == 2 and "not a readable results store" in r.stderr and "Traceback" not in r.stderr


# Models that end at staggered, deterministic times: most stop at their own epoch cap (not_converged), the
# rest when the tiny threshold is reached; each is committed when it ends.
KILL_GRID = """name: kill
data: mnist5k
pairs: [[3, 8]]
n_train: [32]
seeds: [0, 1]
hidden: 16
lr: 0.05
batch_size: 16
threshold: 1.0e-12
max_epochs: [30, 60, 120, 250, 500, 1000, 1500, 2000, 3000]
measure: {points: 100, segments: 20, points_per_segment: 10}
"""


def _rows(path):
    db = sqlite3.connect(str(path))
    try:
        return {k: (t, rec) for k, t, rec in db.execute("SELECT key, finished_at, record FROM runs")}
    finally:
        db.close()


def test_kill_9_mid_grid_loses_nothing_finished_and_resume_duplicates_nothing(tmp_path):
    f = tmp_path / "kill.yaml"
    f.write_text(KILL_GRID)
    out = tmp_path / "exp"
    keys = {grid.config_key(c) for c in grid.load(f).configs()}
    assert len(keys) == 18
    proc = subprocess.Popen([sys.executable, "-m", "smoothness", "run", f, "--out", out, "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = out / Store.FILENAME
    deadline = time.time() + 300
    while time.time() < deadline:
        if db.exists():
            try:
                if len(_rows(db)) >= 4:
                    break
            except sqlite3.OperationalError:
                pass
        assert proc.poll() is None, "the grid finished before it could be killed"
        time.sleep(0.05)
    assert proc.poll() is None, "the grid finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _rows(db)
    assert 4 <= len(before) < 18 and set(before) <= keys
    check = sqlite3.connect(str(db))
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()

    r = run_cli("run", f, "--out", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    m = re.search(r"18 models, (\d+) trained now, (\d+) already stored", r.stdout)
    assert m and int(m.group(2)) == len(before) and int(m.group(1)) == 18 - len(before), r.stdout
    after = _rows(db)
    assert set(after) == keys                                    # every model, once (the key is the primary key)
    assert all(after[k] == before[k] for k in before)           # finished rows untouched
    st = re.search(r"converged (\d+), not converged (\d+), diverged 0", r.stdout)
    assert st and int(st.group(1)) + int(st.group(2)) == 18

    r = run_cli("run", f, "--out", out, "--device", "cpu")      # nothing left to do
    assert r.returncode == 0 and "0 trained now, 18 already stored" in r.stdout
    assert _rows(db) == after


def test_run_shows_a_progress_bar_on_a_terminal(tmp_path):
    f = tmp_path / "kill.yaml"
    f.write_text(KILL_GRID.replace("[30, 60, 120, 250, 500, 1000, 1500, 2000, 3000]", "[30, 300]"))
    code, out, err = run_cli_tty("run", f, "--out", tmp_path / "exp", "--device", "cpu")
    assert code == 0, err
    assert "training: 4/4 models" in err and "running" in err and "epoch" in err
    assert "grid kill: 4 models, 4 trained now" in out
