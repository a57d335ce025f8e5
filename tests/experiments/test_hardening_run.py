"""Hardening of `train --save`, `run`, the results store, `compare` and the Ray backend: an existing file is replaced
only when asked, a grid is told from another by its definition, a dry run checks what the run checks, damaged rows are
neither counted as stored nor lost, the summary's counts add up, JSON never holds NaN, and an unreachable Ray
cluster is given up on. Each error is one line."""
import errno
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY, tiny
from smoothness.cli import commands as cli
from smoothness.cli import console
from smoothness.experiments.configuration import grid, griddiff
from smoothness.experiments.running import pipeline
from smoothness.experiments.running import runner as experiments
from smoothness.experiments.storage import claim, modelfile
from smoothness.experiments.storage.store import Store

SMALL = ["--hidden", "8", "--n-train", "16", "--max-epochs", "3", "--segments", "5", "--points", "5",
         "--measure-points", "20", "--device", "cpu"]


def _main(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(code, err, *words):
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smoothness: error:"), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _grid_file(path: Path, **fields) -> Path:
    """The tiny grid (conftest.TINY) as a YAML file, with fields replaced."""
    import yaml
    path.write_text(yaml.safe_dump({**TINY, **fields}))
    return path


# -- train --save ---------------------------------------------------------------------------------------------------
def test_save_refuses_an_existing_file_before_training_unless_overwrite(tmp_path, capsys, monkeypatch):
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes\n")
    trained = []
    real = pipeline.train_and_measure
    monkeypatch.setattr(pipeline, "train_and_measure", lambda *a, **k: trained.append(1) or real(*a, **k))
    code, out, err = _main(capsys, "train", *SMALL, "--save", mine)
    _one_line(code, err, f"--save {mine}", "exists", "--overwrite")
    assert out == "" and trained == [] and mine.read_text() == "my notes\n"
    code, out, err = _main(capsys, "train", *SMALL, "--save", mine, "--overwrite")
    assert code == 0, err
    assert f"saved 1 model(s) to {mine}" in out and len(trained) == 1
    assert len(pipeline.load_models(mine)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]   # no part file left


def test_save_with_an_empty_name_or_overwrite_alone_is_refused(capsys):
    _one_line(*_main(capsys, "train", *SMALL, "--save", "")[::2], "--save", "empty")
    _one_line(*_main(capsys, "train", *SMALL, "--overwrite")[::2], "--overwrite", "--save")
    for cmd in ("train",):
        assert "--overwrite" in subprocess.run([sys.executable, "-m", "smoothness", cmd, "--help"],
                                               capture_output=True, text=True).stdout


def test_save_onto_a_full_disk_says_so_keeps_no_part_file_and_prints_the_results(tmp_path, capsys, monkeypatch):
    real_open = open

    class Full:   # a file on a disk that fills up after 64 bytes
        def __init__(self, path, mode):
            self.f = real_open(path, mode)

        def write(self, b):
            self.f.write(bytes(b)[:64])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(modelfile, "open", Full, raising=False)   # the module's open(), not the builtin
    dest = tmp_path / "m.pt"
    code, out, err = _main(capsys, "train", *SMALL, "--save", dest)
    _one_line(code, err, f"cannot write {dest}: no space left on device")
    assert "enforce fail" not in err and "n_train 16" in out   # the results are printed all the same
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file size limits")
def test_save_beyond_the_file_size_limit_gives_the_systems_reason(tmp_path):
    """A real write failure, without root: a file size limit (RLIMIT_FSIZE) below the saved file's size."""
    import resource
    dest = tmp_path / "m.pt"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))   # the model file is about 100 kB

    r = subprocess.run([sys.executable, "-m", "smoothness", "train", *SMALL, "--hidden", "32", "--save", dest],
                       capture_output=True, text=True, preexec_fn=limit, timeout=600,
                       env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    _one_line(r.returncode, r.stderr, f"cannot write {dest}: file too large")
    assert "n_train 16" in r.stdout and list(tmp_path.iterdir()) == []


# -- run: a grid is told from another by its definition ---------------------------------------------------------------
def test_a_grid_of_the_same_name_defined_otherwise_is_refused_without_merge(exp, tmp_path, capsys):
    path = exp / Store.FILENAME
    held = Store(path, create=False).meta("grid")
    other = _grid_file(tmp_path / "tiny.yaml", max_epochs=30,
                       regularizers=[{"name": "gradient_norm", "lam": [0, 1.0e-3]}])
    for args in ((), ("--dry-run",)):
        code, out, err = _main(capsys, "run", other, "--out", exp, "--device", "cpu", *args)
        if args:   # the dry run says the run would refuse it
            assert code == 0 and "defined otherwise (its max_epochs, regularizers differ)" in out
            assert "run refuses it without --merge" in out
        else:
            _one_line(code, err, "holds grid 'tiny' defined otherwise (its max_epochs, regularizers differ)",
                      "--merge")
    with Store(path, create=False) as st:
        assert st.meta("grid") == held and len(st) == 2 and not st.meta("merged")
    s = experiments.run_grid(grid.load(other), exp, device="cpu", progress=False, merge=True)
    assert s.trained == 4   # 2 baselines at 30 epochs and 2 regularized models
    with Store(path, create=False) as st:
        assert st.meta("grid") == held   # the store keeps its own grid...
        merged = st.meta("merged")
        assert [m["max_epochs"] for m in merged] == [[30]]   # ...and lists the other beside it
    again = experiments.run_grid(grid.load(other), exp, device="cpu", progress=False, merge=True)
    assert (again.trained, again.stored_before) == (0, 4)
    with Store(path, create=False) as st:
        assert st.meta("grid") == held and len(st.meta("merged")) == 1


def test_the_same_grid_resumes_whatever_its_description(exp, tmp_path, capsys):
    same = _grid_file(tmp_path / "tiny.yaml", description="Told otherwise.", table2_lambdas="paper")
    code, out, err = _main(capsys, "run", same, "--out", exp, "--device", "cpu")
    assert code == 0, err
    assert "2 models, 0 trained now, 2 already stored" in out
    with Store(exp, create=False) as st:
        assert st.meta("grid")["description"] == "Told otherwise." and not st.meta("merged")


def test_stored_grid_definitions_of_earlier_versions_are_the_same_grid(tmp_path):
    """The committed stores hold grids as earlier versions wrote them (other measure keys, fewer fields): each is
    the grid of its preset or result file, and a dry run of that grid into a copy of the store is not refused."""
    designs = {"2026-12-02-quick": "quick", "2026-12-01-sam": "sam", "2026-12-01-oned": "oned",
               "2026-12-01-fashion-large-n-table2": "fashion-large-n-table2",
               "2026-12-02-fashion-table2-10k": "fashion-table2-10k",
               "2026-12-01-fashion-large-n": str(ROOT / "results" / "2026-12-01-fashion-large-n.yaml")}
    for store, design in designs.items():
        copy = tmp_path / store
        copy.mkdir()
        shutil.copy(ROOT / "results" / f"{store}.sqlite", copy / Store.FILENAME)
        g = grid.resolve(design)
        with Store(copy, create=False) as st:
            assert griddiff.differences(st.meta("grid"), g) == [], store
            assert claim.other_grid(st, g) is None, store
        line = experiments.dry_run(g, copy)
        assert "refuses" not in line and " 0 to train" in line, line
    # the preset fashion-large-n has changed since its store was made (seed 1 dropped): another definition
    g = grid.preset("fashion-large-n")
    with Store(tmp_path / "2026-12-01-fashion-large-n", create=False) as st:
        assert claim.other_grid(st, g) == ("fashion-large-n", ["seeds"])


def test_a_dry_run_of_a_committed_store_is_not_refused(tmp_path, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(ROOT / "results" / "2026-12-01-sam.sqlite", copy / Store.FILENAME)
    code, out, err = _main(capsys, "run", "sam", "--dry-run", "--out", copy, "--device", "cpu")
    assert code == 0 and err == "", err
    assert out.strip() == f"grid sam: 60 models (5 pairs, sizes [128], seeds [0, 1, 2]); 60 stored in {copy}, 0 to train"


# -- run --dry-run makes the run's checks ---------------------------------------------------------------------------
@pytest.mark.parametrize("n_train, words", [(100000, "needs 50000 images per digit"), (17, "even number")])
def test_a_dry_run_fails_where_the_run_fails_with_the_same_line(tmp_path, capsys, n_train, words):
    g = _grid_file(tmp_path / "big.yaml", n_train=[n_train])
    run = _one_line(*_main(capsys, "run", g, "--out", tmp_path / "a", "--device", "cpu")[::2], words)
    dry = _one_line(*_main(capsys, "run", g, "--out", tmp_path / "b", "--device", "cpu", "--dry-run")[::2], words)
    assert dry == run
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_negative_retries_are_refused_for_every_backend(tmp_path, capsys, backend):
    for extra in ((), ("--dry-run",)):
        _one_line(*_main(capsys, "run", "smoke", "--out", tmp_path / "x", "--backend", backend, "--retries", "-1",
                         *extra)[::2], "--retries", "0 or more")
    assert not (tmp_path / "x").exists()


def test_contradicting_precision_options_are_refused(tmp_path, capsys):
    _one_line(*_main(capsys, "train", *SMALL, "--tf32", "--matmul-precision", "fp32")[::2],
              "--tf32 and --matmul-precision fp32 contradict")
    for cmd in ("run", "reproduce"):
        _one_line(*_main(capsys, cmd, "smoke", "--out", tmp_path / "x", "--matmul-precision", "tf32-emulated",
                         "--tf32", "--dry-run")[::2], "--tf32 and --matmul-precision tf32-emulated contradict")
    code, out, err = _main(capsys, "run", "smoke", "--out", tmp_path / "x", "--matmul-precision", "tf32", "--tf32",
                           "--dry-run", "--device", "cpu")
    assert "contradict" not in err   # the same precision twice; refused on a CPU for its own reason
    a = cli.build_parser().parse_args(["train", "--matmul-precision", "tf32-emulated"])
    assert cli.matmul_precision(a) == "tf32-emulated"
    assert cli.matmul_precision(cli.build_parser().parse_args(["train"])) == "fp32"
    assert cli.matmul_precision(cli.build_parser().parse_args(["run", "smoke"])) is None   # the grid's own


# -- compare ------------------------------------------------------------------------------------------------------------
def test_compare_of_stores_without_a_model_in_common_fails_with_the_fields_that_differ(exp, tmp_path, capsys):
    other = tmp_path / "other"
    experiments.run_grid(tiny(seeds=[1]), other, device="cpu", progress=False)
    code, out, err = _main(capsys, "compare", exp, other)
    line = _one_line(code, err, "no model of", "matched", "seed (A: 0; B: 1)", "--ignore")
    assert out == "" and "n_train" not in line
    assert _main(capsys, "compare", exp, exp)[0] == 0


# -- damaged rows -------------------------------------------------------------------------------------------------------
def test_damaged_rows_are_not_counted_as_stored_and_are_trained_again(exp, capsys):
    path = exp / Store.FILENAME
    db = sqlite3.connect(str(path))
    keys = [k for (k,) in db.execute("SELECT key FROM runs ORDER BY rowid")]
    db.execute("UPDATE runs SET record = substr(record, 1, 40) WHERE key = ?", (keys[0],))   # truncated JSON
    db.execute("UPDATE runs SET status = 'finished', record = json_set(record, '$.status', 'finished') "
               "WHERE key = ?", (keys[1],))   # not a status
    db.commit()
    db.close()
    with Store(path, create=False) as st:
        assert st.keys() == set() and [k for k, _ in st.damaged()] == keys and len(st) == 2
    code, out, err = _main(capsys, "report", exp)
    assert code == 0
    warn = [line for line in err.splitlines() if "damaged" in line]
    assert len(warn) == 1 and "left out 2 damaged model row(s)" in warn[0] and "salvage" in warn[0]
    assert "2 more stored row(s) could not be read as models (damaged" in (exp / "report" / "report.md").read_text()
    from smoothness.experiments.storage.salvage import salvage
    assert salvage(exp, exp.parent / "salvaged")[:2] == (0, 2)   # salvage agrees: neither row is copied
    g = _grid_file(exp.parent / "tiny.yaml")
    code, out, err = _main(capsys, "run", g, "--out", exp, "--dry-run", "--device", "cpu")
    assert code == 0 and "0 stored in" in out and "2 to train" in out
    code, out, err = _main(capsys, "run", g, "--out", exp, "--device", "cpu", "--quiet")
    assert code == 0, err
    assert "2 models, 2 trained now, 0 already stored" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "2 damaged model row(s)" in lines[0] and "trained again" in lines[0], err
    assert "salvage" in lines[0]
    with Store(path, create=False) as st:
        assert st.damaged() == [] and st.keys() == set(keys) and len(st) == 2
        assert all(r["status"] in ("converged", "not_converged", "diverged") for r in st.records())
        assert all(st.params(k) is not None for k in keys)   # the weights of the new rows
    code, out, err = _main(capsys, "report", exp)
    assert code == 0 and "damaged" not in err


# -- the summary of two runs of one grid into one store ---------------------------------------------------------------
def test_two_runs_of_one_grid_at_once_count_every_model_once(tmp_path, monkeypatch):
    """Both runs start before either has stored anything, so both train every model; each model is stored by the
    run that finishes it first, and counted by the other as stored meanwhile by another run."""
    g = tiny(n_train=[16], seeds=[0, 1, 2], max_epochs=5)
    out = tmp_path / "exp"
    both = threading.Barrier(2, timeout=120)
    real = experiments.check_data
    monkeypatch.setattr(experiments, "check_data", lambda *a: (real(*a), both.wait()))   # after both read the store
    summaries, errors = [None, None], []

    def run(i):
        try:
            summaries[i] = experiments.run_grid(g, out, device="cpu", progress=False, snapshot_every=0)
        except BaseException as e:   # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    for s in summaries:
        assert s.total == 3 and s.stored_before == 0 and s.left == 0
        assert s.trained + s.stored_before + s.elsewhere + s.skipped + s.left == s.total, s.line()
        line = s.line()
        if s.elsewhere:
            assert f"{s.elsewhere} stored meanwhile by another run" in line
        assert "left untrained" not in line
    assert sum(s.trained for s in summaries) == 3   # each model stored once, by one of them
    with Store(out, create=False) as st:
        assert len(st) == 3


NORMED = """
from torch import nn

def normed():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 4), nn.LayerNorm(4), nn.ReLU(), nn.Linear(4, 1))
"""


def test_a_measures_warning_during_run_is_one_smoothness_line(tmp_path):
    import yaml
    (tmp_path / "normed_run.py").write_text(NORMED)
    g = tmp_path / "g.yaml"
    g.write_text(yaml.safe_dump({**{k: v for k, v in TINY.items() if k != "hidden"}, "max_epochs": 2,
                                 "model": {"factory": "normed_run:normed"}}))
    r = subprocess.run([sys.executable, "-m", "smoothness", "run", str(g), "--out", str(tmp_path / "o"), "--quiet"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines() == [
        "smoothness: warning: no Lipschitz upper bound: LayerNorm is not among the layers this bound covers (see "
        "smoothness.measures.lipbound)"], r.stderr


def test_the_summary_line_counts_models_left_untrained():
    s = experiments.RunSummary("g", 10, 3, trained=4, skipped=1, elsewhere=1)
    assert s.left == 1
    assert "10 models, 4 trained now, 3 already stored, 1 above a lambda ladder's edge" in s.line()
    assert "1 stored meanwhile by another run, 1 left untrained" in s.line()


# -- JSON: a missing value is null --------------------------------------------------------------------------------------
def _strict(line: str) -> dict:
    def refuse(token):
        raise ValueError(f"not JSON: {token}")
    return json.loads(line, parse_constant=refuse)


def test_train_and_measure_write_a_missing_value_as_null(tmp_path, capsys, monkeypatch):
    import numpy as np
    # measure --json of a checkpoint whose output is NaN
    net = torch.nn.Sequential(torch.nn.Linear(4, 1))
    with torch.no_grad():
        net[0].weight.fill_(float("nan"))
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 4)), tmp_path / "net.ts")
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32))
    code, out, err = _main(capsys, "measure", tmp_path / "net.ts", "--inputs", tmp_path / "x.npz", "--measures",
                           "gradient_norm", "--json", "--device", "cpu")
    assert code == 0, err
    rec = _strict(out)
    assert rec["gradient_norm"] is None and "NaN" not in out
    # train --json of a diverged model: the measures it has no value for are null, too
    code, out, err = _main(capsys, "train", *SMALL, "--lr", "1e6", "--json")
    assert code == 0, err
    rec = _strict(out)
    assert rec["status"] == "diverged" and rec["loss_train"] is None and "NaN" not in out
    # at any depth, and NumPy scalars too
    console.emit_record({"a": float("nan"), "b": [1.0, float("inf")], "c": np.float32("nan"), "d": {"e": -np.inf}},
                        True)
    assert _strict(capsys.readouterr().out) == {"a": None, "b": [1.0, None], "c": None, "d": {"e": None}}


# -- Ray: an address where nothing answers ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_run(tmp_path, port, *extra):
    g = _grid_file(tmp_path / "tiny.yaml")
    return [sys.executable, "-m", "smoothness", "run", str(g), "--out", str(tmp_path / "exp"), "--backend", "ray",
            "--address", f"127.0.0.1:{port}", "--quiet", *extra]


def test_ray_address_where_nothing_listens_is_given_up_after_the_timeout(tmp_path):
    pytest.importorskip("ray")
    port = _free_port()
    t0 = time.monotonic()
    r = subprocess.run(_ray_run(tmp_path, port, "--ray-timeout", "2"), capture_output=True, text=True, timeout=300)
    _one_line(r.returncode, r.stderr, f"could not reach the Ray cluster at 127.0.0.1:{port} within 2 s",
              "connection refused", "--ray-timeout")
    assert time.monotonic() - t0 < 120
    assert not (tmp_path / "exp").exists()   # the run stored nothing: its store is removed


def test_ray_address_that_does_not_answer_as_ray_is_given_up_after_the_timeout(tmp_path):
    pytest.importorskip("ray")
    with socket.socket() as listener:   # accepts connections (the kernel's backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        r = subprocess.run(_ray_run(tmp_path, port, "--ray-timeout", "3"), capture_output=True, text=True,
                           timeout=300)
    _one_line(r.returncode, r.stderr, f"could not connect to the Ray cluster at 127.0.0.1:{port} within 3 s",
              "does not answer as a Ray cluster")   # and nothing of Ray's own tries


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="tells that Ray is loaded from /proc")
@pytest.mark.parametrize("listening", [False, True])
def test_sigterm_while_ray_connects_ends_the_run_with_143(tmp_path, listening):
    pytest.importorskip("ray")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        if listening:   # accepts connections, never answers: Ray's own connection hangs
            listener.listen(8)
        else:
            listener.close()
        p = subprocess.Popen(_ray_run(tmp_path, port, "--ray-timeout", "300"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        _terminate_while_connecting(p)
    lines = p.stderr_text.strip().splitlines()
    assert p.returncode == 143, p.stderr_text
    assert len(lines) == 1 and lines[0].startswith("smoothness: terminated (SIGTERM)"), p.stderr_text
    assert "nothing is stored" in lines[0] and not (tmp_path / "exp").exists()


def _terminate_while_connecting(p):
    """SIGTERM to the run `p` two seconds after it loaded Ray (it is connecting then); its stderr in p.stderr_text."""
    try:
        deadline = time.monotonic() + 300
        while p.poll() is None and time.monotonic() < deadline:   # Ray imported: the run is about to connect
            try:
                if "_raylet" in Path(f"/proc/{p.pid}/maps").read_text():
                    break
            except OSError:
                pass
            time.sleep(0.2)
        time.sleep(2.0)
        assert p.poll() is None, p.communicate()
        p.send_signal(signal.SIGTERM)
        _, p.stderr_text = p.communicate(timeout=60)   # at once: Ray's own tries would take minutes
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# -- a file that cannot be created, a name too long -------------------------------------------------------------------
def test_save_where_no_file_can_be_created_is_refused_before_training(tmp_path, capsys, monkeypatch):
    """The folder is writable, but the temporary file written beside FILE has a name too long to create."""
    trained = []
    monkeypatch.setattr(pipeline, "train_and_measure", lambda *a, **k: trained.append(1))
    monkeypatch.chdir(tmp_path)
    name = "m" * 250 + ".pt"
    code, out, err = _main(capsys, "train", *SMALL, "--save", name)
    _one_line(code, err, "cannot create a file in .: file name too long")
    assert out == "" and trained == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [("train", "--save", "LONG.pt"), ("run", "LONG.yaml", "--dry-run"),
                                  ("run", "smoke", "--out", "LONG", "--dry-run"), ("report", "LONG"),
                                  ("measure", "LONG.pt")])
def test_a_file_name_too_long_is_one_line(tmp_path, capsys, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    long = "a" * 300
    line = _one_line(*_main(capsys, *(a.replace("LONG", long) for a in args))[::2],
                     "the file name is too long for the file system")
    assert long in line and list(tmp_path.iterdir()) == []
