"""The Ray backend: chunking, the missing-Ray message, agreement with the local backend, and a worker
process SIGKILLed in the middle of a grid on a two-node local Ray cluster."""
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict

import pytest

from smoothness.cli import commands
from smoothness.errors import SmoothnessError
from smoothness.experiments.configuration import grid
from smoothness.experiments.running import distributed, pipeline
from smoothness.experiments.running import runner as experiments
from smoothness.experiments.storage.snapshots import FOLDER, SnapshotDir
from smoothness.experiments.storage.store import Store
from tolerance import assert_close_tensors, assert_same_outcome

# Two pairs x N in {32, 256} x 2 seeds: with 4 models per chunk, each chunk holds two quick models
# (N = 32) and two slow ones (N = 256), so a chunk that has delivered a model is still running.
GRID = """
name: raytest
data: mnist5k
pairs: [[3, 8], [4, 9]]
n_train: [32, 256]
seeds: [0, 1]
hidden: 32
lr: 0.05
threshold: 0.001
max_epochs: 3000
measure: {segments: 8, points: 32, points_per_segment: 16}
"""
FIELDS = ("status", "epochs", "steps", "loss_epoch", "loss_train", "loss_test", "gradient_norm",
          "function_path_length", "gradient_path_length", "weights_product", "gradient_norm_train")


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("raygrid") / "raytest.yaml"
    f.write_text(GRID)
    return f


@pytest.fixture(scope="module")
def reference(grid_file, tmp_path_factory):
    """The grid trained by the local backend: {key: (record, weights)}."""
    out = tmp_path_factory.mktemp("local")
    s = experiments.run_grid(grid.load(grid_file), out, device="cpu", progress=False)
    assert s.trained == 8
    with Store(out) as st:
        return {r["key"]: (r, st.params(r["key"])) for r in st.records()}


def check_against_grid(out, grid_file, reference):
    """Row by row: the store holds every model of the grid exactly once, with its own config, and the
    same outcome as the uninterrupted local run, within the tolerances of tests/tolerance.py."""
    g = grid.load(grid_file)
    configs = {grid.config_key(c): c for c in g.configs()}
    db = sqlite3.connect(str(out / Store.FILENAME))
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = [r[0] for r in db.execute("SELECT key FROM runs")]
    db.close()
    assert sorted(rows) == sorted(configs)            # no model lost, none twice
    with Store(out) as st:
        for rec in st.records():
            cfg = asdict(configs[rec["key"]])
            for k, v in cfg.items():
                assert rec[k] == (list(v) if isinstance(v, tuple) else v), (rec["key"], k)
            ref, ref_params = reference[rec["key"]]
            # A Ray worker may run other GEMM kernels (one thread): the same outcome, not the same bits.
            assert_same_outcome(ref, rec, FIELDS)
            assert_close_tensors(st.params(rec["key"]).tensors(), ref_params.tensors(), rel=0.05)
        return st.records()


def test_chunks_share_a_batch_key_and_respect_the_size(grid_file):
    g = grid.load(grid_file)
    todo = [(grid.config_key(c), c) for c in g.configs()]
    chunks = distributed.make_chunks(todo, 3)
    assert [len(c.items) for c in chunks] == [3, 3, 2]
    assert sorted(k for c in chunks for k, _ in c.items) == sorted(k for k, _ in todo)
    # Different regularizer kinds never share a chunk (one batched program trains one kind).
    reg = grid.parse({"name": "r", "n_train": [64], "seeds": [0, 1],
                      "regularizers": [{"name": "gradient_norm", "lam": [0, 1e-3]}]})
    todo = [(grid.config_key(c), c) for c in reg.configs()]
    for c in distributed.make_chunks(todo, 100):
        assert len({cfg.batch_key() for _, cfg in c.items}) == 1
    assert len(distributed.make_chunks(todo, 100)) == 2
    assert distributed.default_chunk_size(1080, 8) == 68
    # The longest models first, in the first chunks: they start at once on separate slots.
    big = grid.parse({"name": "b", "n_train": [64, 8192, 256, 2048], "seeds": [0, 1, 2]})
    todo = [(grid.config_key(c), c) for c in big.configs()]
    chunks = distributed.make_chunks(todo, 3)
    assert [[cfg.n_train for _, cfg in c.items] for c in chunks] == [[8192] * 3, [2048] * 3, [256] * 3, [64] * 3]
    assert distributed.default_chunk_size(3, 8) == 1
    # A step with a penalty costs several plain steps: GPL's models come before plain ones of the same size.
    mixed = grid.parse({"name": "m", "n_train": [512], "regularizers": [
        {"name": "none"}, {"name": "weights_product", "lam": [1e-4]}, {"name": "gradient_path_length", "lam": [1e-5]}]})
    todo = [(grid.config_key(c), c) for c in mixed.configs()]
    assert [c.items[0][1].regularizer for c in distributed.make_chunks(todo, 1)] == [
        "gradient_path_length", "weights_product", "none"]
    with pytest.raises(SmoothnessError, match="chunk-size"):
        distributed.make_chunks(todo, 0)


def test_missing_ray_gives_the_install_command(grid_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    rc = commands.main(["run", str(grid_file), "--out", str(tmp_path), "--backend", "ray", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "smoothness[ray]" in err and "Traceback" not in err
    with Store(tmp_path) as st:
        assert len(st) == 0


def test_local_ray_instance_gives_the_local_backends_results(grid_file, reference, tmp_path, monkeypatch):
    import io

    from smoothness.experiments.running import distributed
    out = tmp_path / "exp"
    # one model was trained before up to its last epoch, as by a run killed there: a worker goes on from its snapshot
    first = grid.load(grid_file).configs()[-1]
    snaps = SnapshotDir(out / FOLDER, 1e-9)
    (_, rec), = pipeline.iter_train_and_measure([first], device="cpu", snapshots=snaps)
    # progress lines as in a log file, with the period of the snapshots: the driver reports every TICK seconds
    monkeypatch.setattr(distributed, "TICK", 0.01)
    log = io.StringIO()
    s = experiments.run_grid(grid.load(grid_file), out, device="cpu", progress=True, stream=log, backend="ray",
                             chunk_size=3, ray_cpus=2, snapshot_every=1e-9)
    assert (s.trained, s.chunks, s.retried) == (8, 3, 0)
    lines = log.getvalue().splitlines()
    assert sum(" seed=" in line for line in lines) == 8   # one line per stored model
    waits = [line for line in lines if "no model finished in the last" in line]
    assert len(waits) > 12, lines   # more than the chunks' comings and goings (3 + 3 + 8) alone would give
    assert "ray backend, a local Ray instance (2 CPUs" in s.line()
    records = {r["key"]: r for r in check_against_grid(out, grid_file, reference)}
    assert records[grid.config_key(first)]["resumed_at_epoch"] == rec["epochs"] - 1
    assert sum("resumed_at_epoch" in r for r in records.values()) == 1 and not (out / FOLDER).exists()
    again = experiments.run_grid(grid.load(grid_file), out, backend="ray", progress=False)
    assert (again.trained, again.stored_before) == (0, 8)   # resume: nothing to do, Ray not even started


def test_a_model_another_run_stored_meanwhile_is_not_trained_again(grid_file, reference):
    """Chunks go to the cluster as slots free up, each checked against the store just before: with one slot, a
    model of the last chunk that another run stores while the first chunk trains is dropped and counted, and every
    other model comes back with the local backend's outcome."""
    todo = [(grid.config_key(c), c) for c in grid.load(grid_file).configs()]
    chunks = distributed.make_chunks(todo, 3)
    late = chunks[-1].items[0][0]
    elsewhere, seen, infos = set(), [], []
    with distributed.RayRunner(num_cpus=1) as runner:
        assert runner.slots == 1
        for key, rec, _ in runner.results(chunks, device="cpu", progress=infos.append, stored=lambda: set(elsewhere)):
            seen.append(key)
            assert_same_outcome(reference[key][0], rec, FIELDS)
            elsewhere.add(late)   # stored by another run once the first model is back
    assert sorted(seen) == sorted(k for k, _ in todo if k != late)
    assert (infos[0]["chunks"], infos[0]["active"]) == (3, 8)   # one submitted, two waiting
    assert infos[-1]["elsewhere"] == 1


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        pid = _parent(pid)
    return False


def _worker_pids(name="ray::train_chunk", ancestor=None):
    """The Ray chunk workers this test process started (through the Ray instance or cluster it made): a worker
    of another Ray instance on the same machine, someone else's grid, is never touched."""
    ancestor = ancestor or os.getpid()
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if f.read().startswith(name.encode()) and _descends_from(int(p), ancestor):
                        pids.append(int(p))
            except OSError:
                pass
    return pids


def test_worker_killed_mid_grid_on_a_two_node_cluster(grid_file, reference, tmp_path):
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out = tmp_path / "exp"
        db = out / Store.FILENAME
        proc = subprocess.Popen([sys.executable, "-m", "smoothness", "run", str(grid_file), "--out", str(out),
                                 "--backend", "ray", "--address", cluster.address, "--chunk-size", "4",
                                 "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed, deadline = None, time.time() + 600   # generous: Ray runs its workers niced
        while killed is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
            try:
                n = sqlite3.connect(str(db)).execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            except sqlite3.Error:
                continue
            pids = _worker_pids() if n >= 1 else []
            if pids:  # a model is stored and a chunk is mid-run: kill the worker training it
                os.kill(pids[0], signal.SIGKILL)
                killed = (pids[0], n)
        out_text, err_text = proc.communicate(timeout=900)
    finally:
        cluster.shutdown()
    assert killed is not None, "no chunk worker was seen running after the first model was stored"
    assert killed[1] < 8
    assert proc.returncode == 0, err_text
    summary = out_text.strip().splitlines()[-1]
    assert re.search(r"8 models, 8 trained now, 0 already stored; converged 8", summary), summary
    assert re.search(r"the Ray cluster at \S+ \(2 CPUs, 0 GPUs\), 2 chunks, [1-9]\d* retried", summary), summary
    assert "[8/8]" in err_text and "queued or running" in err_text
    records = check_against_grid(out, grid_file, reference)
    assert len({r["worker"] for r in records}) >= 2   # trained by more than one worker process


def test_sigterm_to_a_ray_run_is_our_one_line_and_the_store_resumes(grid_file, reference, tmp_path):
    # Ray's core worker installs its own SIGTERM handler (a stack dump, exit status 1); the run puts ours back.
    out = tmp_path / "exp"
    db = out / Store.FILENAME
    proc = subprocess.Popen([sys.executable, "-m", "smoothness", "run", str(grid_file), "--out", str(out),
                             "--backend", "ray", "--ray-cpus", "2", "--chunk-size", "1", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline and not _worker_pids():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("smoothness: terminated (SIGTERM)") and "SIGTERM received" not in err
    if db.exists():
        s = experiments.run_grid(grid.load(grid_file), out, device="cpu", progress=False)
        assert s.trained + s.stored_before == 8
        check_against_grid(out, grid_file, reference)


CNN_GRID = """
name: ray-cnn
data: mnist5k
pairs: [[3, 8]]
n_train: [16, 32]
seeds: 0
model: {family: cnn, channels: [4], kernel: 3, pool: max}
alpha: 1.0
lr: 0.05
threshold: 1.0e-3
max_epochs: 200
regularizers:
  - {name: none}
  - {name: gradient_norm, lam: [1.0e-3], n_train: [32]}
measure: {measure_points: 40, segments: 10, points_per_segment: 5}
"""


def test_a_grid_of_cnns_on_ray_gives_the_local_backends_results(tmp_path):
    f = tmp_path / "ray-cnn.yaml"
    f.write_text(CNN_GRID)
    local = experiments.run_grid(grid.load(f), tmp_path / "local", device="cpu", progress=False)
    ray = experiments.run_grid(grid.load(f), tmp_path / "ray", device="cpu", progress=False, backend="ray",
                               ray_cpus=2)
    assert local.trained == ray.trained == 3 and "ray backend" in ray.line()
    with Store(tmp_path / "local") as a, Store(tmp_path / "ray") as b:
        ref = {r["key"]: r for r in a.records()}
        got = b.records()
        assert sorted(r["key"] for r in got) == sorted(ref)
        for rec in got:
            assert rec["model"] == {"family": "cnn", "channels": [4], "kernel": 3, "pool": "max"}
            assert_same_outcome(ref[rec["key"]], rec, FIELDS[:-2])
            assert_close_tensors(b.params(rec["key"]).tensors(), a.params(rec["key"]).tensors(), rel=0.05)
