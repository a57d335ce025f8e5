"""Hardening: nothing lost or silently wrong when the disk or the store misbehaves, bounded work on any input, and one
line instead of a traceback for every error a user can cause."""
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import count_rows, damage_store, run_cli, run_cli_tty, tiny
from smoothness import training
from smoothness.cli import commands
from smoothness.errors import ConfigError, StoreError
from smoothness.experiments.configuration import grid
from smoothness.experiments.running import pipeline, runner
from smoothness.experiments.storage import opening
from smoothness.experiments.storage import store as store_mod
from smoothness.experiments.storage.store import Store


@pytest.fixture(scope="module")
def conv(tmp_path_factory):
    """A store whose models converge (three sizes: Table 1 and the verdict have something to say)."""
    out = tmp_path_factory.mktemp("conv") / "exp"
    runner.run_grid(tiny(n_train=[16, 32, 64], max_epochs=400), out, device="cpu", progress=False)
    return out


def _main(capsys, *args):
    code = commands.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(code, err, *words):
    assert code != 0 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smoothness: error:"), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# -- data lost or silently wrong ----------------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["folder", "file"])
def test_a_store_deleted_while_its_grid_runs_stops_the_run(tmp_path, monkeypatch, capsys, what):
    out = tmp_path / "exp"
    real_add, calls = Store.add, []

    def add(self, key, record, params=None):
        calls.append(key)
        if len(calls) == 2:   # after the first model is stored, someone removes the store
            shutil.rmtree(out) if what == "folder" else (out / Store.FILENAME).unlink()
        return real_add(self, key, record, params)

    monkeypatch.setattr(Store, "add", add)
    g = tmp_path / "tiny.yaml"
    g.write_text("name: tiny\npairs: [[3, 8]]\nn_train: [16, 32]\nhidden: 8\nlr: 0.05\nbatch_size: 16\n"
                 "max_epochs: 20\nthreshold: 1.0e-3\nmeasure: {points: 50, segments: 5, points_per_segment: 5}\n")
    code, stdout, err = _main(capsys, "run", g, "--out", out, "--quiet")
    _one_line(code, err, "deleted or replaced", str(out / Store.FILENAME), "run the same command again")
    assert "trained now" not in stdout


def test_two_different_grids_started_at_once_into_one_out_store_one_grid(tmp_path):
    out = tmp_path / "exp"
    grids = []
    for name in ("first", "second"):
        g = tmp_path / f"{name}.yaml"
        g.write_text(f"name: {name}\npairs: [[3, 8]]\nn_train: [16, 32, 64]\nhidden: 8\nlr: 0.05\nbatch_size: 16\n"
                     "max_epochs: 300\nthreshold: 1.0e-3\nmeasure: {points: 50, segments: 5, points_per_segment: 5}\n")
        grids.append(g)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "smoothness", "run", str(g), "--out", str(out), "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for g in grids]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[2] == 2)
    assert "Traceback" not in loser[1] and "would mix its models into it" in loser[1]
    with Store(out, create=False) as st:
        names = {r["key"] for r in st.records()}
        held = st.meta("grid")["name"]
    assert names == {grid.config_key(c) for c in grid.load(tmp_path / f"{held}.yaml").configs()}


def test_a_claim_by_a_live_run_of_another_grid_is_respected_even_with_no_model(tmp_path):
    out = tmp_path / "exp"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with Store(out / Store.FILENAME) as st:
            runner.claim_store(st, tiny(name="other"), merge=False)
            st.set_meta("owner", {**st.meta("owner"), "pid": sleeper.pid})   # as if that process had claimed it
            with pytest.raises(ConfigError, match="being written by a run that is still going"):
                runner.claim_store(st, tiny(), merge=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    with Store(out / Store.FILENAME) as st:   # the claimer is gone and stored nothing: the store is free
        runner.claim_store(st, tiny(), merge=False)
        assert st.meta("grid")["name"] == "tiny"


def test_a_folder_named_like_the_store_file_is_refused(tmp_path, capsys):
    out = tmp_path / "exp"
    (out / Store.FILENAME).mkdir(parents=True)
    _one_line(*_main(capsys, "run", "smoke", "--out", out)[::2], "is a folder, not a results store file")
    assert not any((out / Store.FILENAME).iterdir())
    _one_line(*_main(capsys, "report", out)[::2], str(out / Store.FILENAME))


def test_a_store_with_changed_tables_or_a_foreign_database_is_refused_before_training(exp, tmp_path, capsys,
                                                                                     monkeypatch):
    trained = []
    monkeypatch.setattr(training.BatchedTrainer, "iter_train", lambda *a, **k: trained.append(1) or iter(()))
    db = sqlite3.connect(str(exp / Store.FILENAME))
    db.execute("ALTER TABLE runs ADD COLUMN extra TEXT")
    db.commit()
    db.close()
    g = tmp_path / "tiny3.yaml"
    g.write_text("name: tiny\npairs: [[3, 8]]\nn_train: [16, 32, 64]\nhidden: 8\nlr: 0.05\nbatch_size: 16\n"
                 "max_epochs: 20\nthreshold: 1.0e-3\nmeasure: {points: 50, segments: 5, points_per_segment: 5}\n")
    _one_line(*_main(capsys, "run", g, "--out", exp)[::2], "table runs has the columns", "extra", "salvage")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    db = sqlite3.connect(str(foreign / Store.FILENAME))
    db.execute("CREATE TABLE notes (id INTEGER, text TEXT)")
    db.commit()
    db.close()
    before = hashlib.sha256((foreign / Store.FILENAME).read_bytes()).hexdigest()
    _one_line(*_main(capsys, "run", g, "--out", foreign)[::2], "not a results store", "notes")
    assert hashlib.sha256((foreign / Store.FILENAME).read_bytes()).hexdigest() == before
    assert trained == []


@pytest.mark.parametrize("whole", [False, True])
def test_a_damaged_store_is_not_written_to_and_every_command_gives_the_salvage_hint(exp, capsys, whole):
    path = exp / Store.FILENAME
    store_mod.Store(exp).close()   # checkpoint the WAL into the file
    damage_store(path, whole)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    g = exp.parent / "tiny3.yaml"
    g.write_text("name: tiny\npairs: [[3, 8]]\nn_train: [16, 32, 64]\nhidden: 8\nlr: 0.05\nbatch_size: 16\n"
                 "max_epochs: 20\nthreshold: 1.0e-3\nmeasure: {points: 50, segments: 5, points_per_segment: 5}\n")
    for args in (("run", g, "--out", exp), ("run", g, "--out", exp, "--dry-run"), ("report", exp)):
        _one_line(*_main(capsys, *args)[::2], str(path), "damaged", "salvage")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_a_report_again_after_rows_disappear_leaves_no_stale_file(tmp_path, capsys):
    out = tmp_path / "exp"
    runner.run_grid(tiny(regularizers=[{"name": "gradient_norm", "lam": [0, 1e-3]}], n_train=[16, 32, 64],
                              max_epochs=400), out, device="cpu", progress=False)
    assert _main(capsys, "report", out)[0] == 0
    rep = out / "report"
    assert (rep / "table2.md").exists() and (rep / "figure2.png").exists()
    (rep / "my-notes.txt").write_text("mine")
    db = sqlite3.connect(str(out / Store.FILENAME))
    db.execute("DELETE FROM weights WHERE key IN (SELECT key FROM runs WHERE regularizer != 'none')")
    db.execute("DELETE FROM runs WHERE regularizer != 'none'")
    db.commit()
    db.close()
    assert _main(capsys, "report", out)[0] == 0
    assert not (rep / "table2.md").exists() and not (rep / "figure2.png").exists()
    assert (rep / "table1.md").exists() and (rep / "my-notes.txt").read_text() == "mine"


def test_a_signal_after_the_work_is_done_ends_the_process_quietly(tmp_path):
    # SIGTERM while the interpreter runs its atexit callbacks (right after the summary line)
    script = ("import atexit, os, signal, sys\n"
              "from smoothness.__main__ import main\n"
              "atexit.register(lambda: os.kill(os.getpid(), signal.SIGTERM))\n"
              "sys.exit(main(['presets']))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 128 + signal.SIGTERM and "Exception ignored" not in r.stderr and "Traceback" not in r.stderr
    assert "smoke" in r.stdout


# -- one line, not a traceback ------------------------------------------------------------------------------------
def test_a_full_disk_while_storing_keeps_what_was_committed(exp):
    with Store(exp) as st:
        pages = st.db.execute("PRAGMA page_count").fetchone()[0]
        st.db.execute(f"PRAGMA max_page_count={pages}")   # SQLite's own "database or disk is full"
        rec = {**st.records()[0], "n_train": 999}
        with pytest.raises(StoreError) as e:
            st.add("k" * 24, rec, params=st.params(rec["key"]))
    assert "no space left" in str(e.value) and "the 2 model(s) committed before are kept" in str(e.value)
    assert count_rows(exp / Store.FILENAME) == 2


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("size", ["8k", "160k"])
def test_a_small_disk_is_one_line_that_says_so(tmp_path, capsys, size):
    disk = tmp_path / "disk"
    if not _tmpfs(disk, size):
        pytest.skip("cannot mount a tmpfs here (not root); the full store is tested through SQLite's page limit")
    try:
        g = tmp_path / "g.yaml"
        g.write_text("name: g\npairs: [[3, 8]]\nn_train: [16, 32, 48, 64]\nseeds: [0, 1, 2]\nhidden: 16\nlr: 0.05\n"
                     "batch_size: 16\nmax_epochs: 10\nthreshold: 1.0e-3\n"
                     "measure: {points: 50, segments: 5, points_per_segment: 5}\n")
        code, _, err = _main(capsys, "run", g, "--out", disk / "exp", "--quiet")
        line = _one_line(code, err, "no space left", "free some space")
        assert "disk I/O error" not in line
        if size != "8k" and (disk / "exp" / Store.FILENAME).exists():
            assert "committed before are kept" in line
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_store_locked_by_another_process_is_one_line(exp, monkeypatch):
    monkeypatch.setattr(store_mod, "LOCK_TIMEOUT", 0.5)
    monkeypatch.setattr(opening, "LOCK_TIMEOUT", 0.5)   # the connection's own wait
    other = sqlite3.connect(str(exp / Store.FILENAME), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with Store(exp) as st:
            rec = {**st.records()[0], "n_train": 999}
            t0 = time.monotonic()
            with pytest.raises(StoreError, match="locked by another process") as e:
                st.add("k" * 24, rec)
            assert time.monotonic() - t0 < 30 and "2 model(s) committed before are kept" in str(e.value)
    finally:
        other.execute("ROLLBACK")
        other.close()


@pytest.mark.parametrize("env", [{"PYTHONIOENCODING": "ascii"}, {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}])
def test_an_ascii_terminal_gets_the_report_and_non_ascii_paths(conv, tmp_path, env):
    out = tmp_path / "résumé-τ"
    shutil.copytree(conv, out)
    r = run_cli("report", out, env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "Kendall" in r.stdout and (out / "report" / "report.html").exists()
    assert "τ" in (out / "report" / "table1.md").read_text(encoding="utf-8")
    r = run_cli("run", out / "nothing.yaml", env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_output_to_a_full_device_is_one_line(made):
    for args in (("presets",), ("report", made)):
        with open("/dev/full", "w") as full:
            r = subprocess.run([sys.executable, "-m", "smoothness", *map(str, args)], stdout=full,
                               stderr=subprocess.PIPE, text=True, timeout=300)
        assert r.returncode == 2 and "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "No space left" in r.stderr


def test_compare_csv_into_a_folder_or_a_missing_folder_is_one_line(made, tmp_path, capsys):
    _one_line(*_main(capsys, "compare", made, made, "--csv", tmp_path)[::2], "is a folder")
    _one_line(*_main(capsys, "compare", made, made, "--csv", tmp_path / "no" / "x.csv")[::2], "does not exist")


def test_compare_csv_never_replaces_a_file_and_refuses_it_first(made, tmp_path, capsys, monkeypatch):
    from smoothness.report import compare
    monkeypatch.setattr(compare, "compare", lambda *a: pytest.fail("compared before the --csv check"))
    keep = tmp_path / "keep.csv"
    keep.write_text("mine\n", encoding="utf-8")
    _one_line(*_main(capsys, "compare", made, made, "--csv", keep)[::2], "exists, and is never replaced")
    assert keep.read_text(encoding="utf-8") == "mine\n"
    _one_line(*_main(capsys, "compare", made, made, "--csv", "")[::2], "--csv '': name the CSV file")
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            _one_line(*_main(capsys, "compare", made, made, "--csv", ro / "m.csv")[::2], "is not writable")
        finally:
            ro.chmod(0o755)


def test_download_to_a_file_or_from_a_bad_mirror_is_one_line(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    _one_line(*_main(capsys, "download", "mnist", "--dir", f, "--mirror", "file:///nowhere/")[::2], "is a file")
    _one_line(*_main(capsys, "download", "mnist", "--dir", tmp_path / "d", "--mirror", "not a url")[::2],
              "not an http(s) or file URL")


def test_an_empty_out_is_refused(capsys):
    _one_line(*_main(capsys, "run", "smoke", "--out", "")[::2], "--out", "empty")


# -- bounded work ---------------------------------------------------------------------------------------------------
LAUGH = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"] + [
    f"{b}: &{b} [{', '.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]) + "\nname: x\n"


@pytest.mark.parametrize("text, words", [
    ("a: " + "[" * 3000 + "]" * 3000 + "\n", ["nested too deeply"]),
    (LAUGH, ["expands to more than"]),
    ("name: x\npairs: all\nn_train: [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]\nseeds: " + str(list(range(3000))) + "\n",
     ["1,350,000 combinations", "limit"]),
    ("name: x\nmax_epochs: 100000000000000000000000\n", ["max_epochs", "limit"]),
    ("name: x\nhidden: 100000000000\n", ["hidden", "limit"]),
    ("name: x\nbatch_size: 100000000000\n", ["batch_size", "limit"]),
    ("name: x\nmeasure: {segments: 100000000000}\n", ["segments", "limit"]),
    ("name: x\nmeasure: {points_per_segment: 100000000000}\n", ["points", "limit"]),
    ("name: x\ndata: line-gp:pool=100000000\n", ["pool", "100,000"]),
])
def test_absurd_grids_are_refused_at_once_with_one_line(tmp_path, capsys, text, words):
    g = tmp_path / "g.yaml"
    g.write_text(text)
    t0 = time.monotonic()
    _one_line(*_main(capsys, "run", g, "--dry-run")[::2], *words)
    assert time.monotonic() - t0 < 20


def test_a_grid_that_is_not_a_regular_file_is_refused(capsys):
    _one_line(*_main(capsys, "run", "/dev/zero", "--dry-run")[::2], "not a regular file")


def test_a_batch_too_large_for_memory_is_split_or_refused(monkeypatch):
    configs = [pipeline.RunConfig(pair=(3, 8), n_train=128, seed=s) for s in range(200)]
    one = training.model_bytes((784, 256, 1), 128)
    monkeypatch.setattr(pipeline, "memory_budget", lambda device: 10 * one + 1)
    assert pipeline.batch_limit(configs, "cpu") == 10      # 200 models wait their turn in batches of 10
    monkeypatch.setattr(pipeline, "memory_budget", lambda device: one // 2)
    with pytest.raises(ConfigError, match="needs about .* MB, more than"):
        pipeline.batch_limit(configs, "cpu")


def test_a_line_task_with_a_huge_pool_is_refused():
    r = run_cli("train", "--data", "line-gp:pool=100000000", timeout=120)   # argparse: usage, then the error line
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith("at most 100,000 points each, got 100,000,000 and 1,000")


# -- the command line a newcomer meets ------------------------------------------------------------------------------
def test_reproduce_takes_the_preset_as_an_argument_and_has_a_dry_run(tmp_path, capsys):
    code, out, _ = _main(capsys, "reproduce", "smoke", "--out", tmp_path / "s", "--dry-run")
    assert code == 0 and "grid smoke: 24 models" in out and not (tmp_path / "s").exists()
    code, out, _ = _main(capsys, "reproduce", "--preset", "smoke", "--out", tmp_path / "s", "--dry-run")
    assert code == 0 and "grid smoke: 24 models" in out
    _one_line(*_main(capsys, "reproduce")[::2], "which preset")


def test_every_command_has_a_description_and_presets_fit_a_terminal(capsys):
    for cmd in ("train", "measure", "download", "data", "run", "report", "reproduce", "compare", "presets", "bench"):
        with pytest.raises(SystemExit):
            commands.main([cmd, "--help"])
        text = capsys.readouterr().out
        usage, _, rest = text.partition("\n\n")
        assert rest.split("\n\n")[0].strip() and not rest.startswith(("positional", "options")), cmd
    code, out, _ = _main(capsys, "presets")
    assert code == 0 and max(map(len, out.splitlines())) <= 100 and "fashion-table2-10k" in out


def test_report_prints_the_verdict(conv, tmp_path, capsys):
    code, out, _ = _main(capsys, "report", conv, "--out", tmp_path / "rep")
    assert code == 0 and "Verdict: does SGD optimize each measure?" in out


def test_the_progress_bar_of_train_ends_full_without_nan():
    code, _, term = run_cli_tty("train", "--n-train", "16", "--hidden", "8", "--batch-size", "16", "--lr", "0.05",
                                "--threshold", "1e-3", "--measure-points", "20", "--segments", "4", "--points", "4")
    assert code == 0
    last = [ln for ln in term.replace("\r", "\n").splitlines() if "epochs" in ln][-1]
    assert "100%" in last and "nan" not in last, last


def test_a_pair_with_a_line_task_is_refused(capsys):
    _one_line(*_main(capsys, "train", "--data", "line-gp", "--pair", "3", "8")[::2], "1-D task", "--pair")


def test_export_copies_a_store_without_its_weights_into_one_file(conv, tmp_path, capsys):
    dest = tmp_path / "copy.sqlite"
    code, out, _ = _main(capsys, "export", conv, dest)
    assert code == 0 and "3 model(s) copied" in out
    assert not Path(f"{dest}-wal").exists() and count_rows(dest, "weights") == 0
    with Store(conv, create=False) as a, Store(dest, create=False) as b:
        assert a.records() == b.records() and a.meta("grid") == b.meta("grid")
    _one_line(*_main(capsys, "export", conv, dest)[::2], "exists")
    for folder in (f"{tmp_path / 'newdir'}/", ""):   # a folder is not a file name: nothing is written
        _one_line(*_main(capsys, "export", conv, folder)[::2], "give the name of a new file")
    assert not (tmp_path / "newdir").exists()
    code, _, _ = _main(capsys, "export", conv, tmp_path / "w.sqlite", "--with-weights")
    assert code == 0 and count_rows(tmp_path / "w.sqlite", "weights") == 3
    new = tmp_path / "resume"
    new.mkdir()
    shutil.copy(dest, new / Store.FILENAME)   # a copy resumes: nothing is trained again
    s = runner.run_grid(tiny(n_train=[16, 32, 64], max_epochs=400), new, device="cpu", progress=False)
    assert s.trained == 0 and s.stored_before == 3


def test_a_large_grid_is_counted_at_once_and_split_into_batches_that_fit(tmp_path, capsys, monkeypatch):
    g = tmp_path / "g.yaml"
    g.write_text("name: big\npairs: all\nn_train: 64\nseeds: " + str(list(range(200))) + "\n")
    t0 = time.monotonic()
    code, out, _ = _main(capsys, "run", g, "--dry-run", "--out", tmp_path / "exp")
    assert code == 0 and "9,000 models" in out and time.monotonic() - t0 < 60
    configs = grid.load(g).configs()
    per_model = training.model_bytes(configs[0].widths, 64)
    assert pipeline.batch_limit(configs, "cpu") * per_model <= pipeline.memory_budget("cpu")


def _open_and_claim(out, barrier, answers):
    barrier.wait()
    try:
        with Store(out) as st, st.transaction():
            st.set_meta("owner", {"pid": os.getpid()})
        answers.put("ok")
    except StoreError as e:
        answers.put(str(e))


def test_processes_creating_one_store_at_the_same_moment_all_open_it(tmp_path):
    """A new store is not in WAL mode until its first writer makes it so; until then SQLite can answer 'locked' at
    once (it does not wait where waiting could deadlock). Every process must still open it and write."""
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    for trial in range(10):
        out, n = tmp_path / f"exp{trial}", 8
        barrier, answers = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_open_and_claim, args=(out, barrier, answers)) for _ in range(n)]
        for p in procs:
            p.start()
        got = [answers.get(timeout=120) for _ in range(n)]
        for p in procs:
            p.join(timeout=60)
        assert got == ["ok"] * n, next(g for g in got if g != "ok")
