"""A factory whose code changed under a grid: the models left to train would be of other tensors than the stored
ones and the snapshots under the same settings, so the run (and its dry run) refuses before any training, and the
store keeps one architecture per configuration."""
import importlib
import sqlite3
import sys

import pytest
import torch

from smoothness.errors import ConfigError
from smoothness.experiments.configuration import grid
from smoothness.experiments.running import runner
from smoothness.experiments.storage import snapshots
from smoothness.experiments.storage.store import Store

NET = """from torch import nn


def net(width=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, {w}), nn.{act}(), nn.Linear({w}, 1))
"""


def _write(folder, w, act="ReLU"):
    (folder / "changing.py").write_text(NET.replace("{w}", str(w)).replace("{act}", act))
    sys.modules.pop("changing", None)
    importlib.invalidate_caches()


@pytest.fixture
def changing(tmp_path, monkeypatch):
    folder = tmp_path / "code"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    _write(folder, 3)
    yield lambda w, act="ReLU": _write(folder, w, act)
    sys.modules.pop("changing", None)


def _grid():
    return grid.parse({"name": "f", "data": "mnist5k", "pairs": [[3, 8]], "n_train": [16], "seeds": [0, 1],
                       "model": {"factory": "changing:net"}, "alpha": 1.0, "lr": 0.05, "max_epochs": 2,
                       "measure": {"measure_points": 20, "segments": 4, "points_per_segment": 4}}, name="f")


def _stored_but_one(g, out) -> list[dict]:
    """Train the grid g of two models into out, then delete the second one's row, as after an interrupted run (one
    model left to train); the records of both as they were stored."""
    runner.run_grid(g, out, progress=False)
    with Store(out / Store.FILENAME) as st:
        recs = st.records()
    with sqlite3.connect(out / Store.FILENAME) as db:
        db.execute("DELETE FROM runs WHERE key=?", (recs[1]["key"],))
    return recs


def test_a_factory_that_builds_other_tensors_than_the_stored_models_is_refused_before_training(tmp_path, changing):
    out = tmp_path / "out"
    recs = _stored_but_one(_grid(), out)
    assert [r["parameters"] for r in recs] == [784 * 3 + 3 + 3 + 1] * 2 and len({r["shapes_digest"] for r in recs}) == 1
    assert len(recs[0]["init_outputs"]) == 4 and recs[0]["init_outputs"] == recs[1]["init_outputs"]
    changing(5)
    for attempt in (lambda: runner.dry_run(_grid(), out), lambda: runner.run_grid(_grid(), out, progress=False)):
        with pytest.raises(ConfigError, match=r"factory changing:net, .* now builds 3,931 parameters .* the store's 1 "
                                              r"model\(s\) of it were trained with other tensors"):
            attempt()
    with Store(out / Store.FILENAME) as st:
        assert st.keys() == {recs[0]["key"]}
    changing(3)   # the code as it was: the model left is trained, of the stored models' tensors
    assert runner.run_grid(_grid(), out, progress=False).trained == 1


def test_a_run_on_a_remote_cluster_checks_the_changed_factory_on_the_driver_before_it_connects(tmp_path, changing,
                                                                                               monkeypatch):
    """With --address the workers build the models, but the driver checks them against the store before it reaches
    for the cluster (here none listens: the refusal comes first), building the family once for the check."""
    from smoothness.experiments.configuration.config import RunConfig
    out = tmp_path / "out"
    _stored_but_one(_grid(), out)
    changing(3, "Tanh")
    built, family = [], RunConfig.family
    monkeypatch.setattr(RunConfig, "family", lambda self: built.append(self) or family(self))
    with pytest.raises(ConfigError, match=r"now computes another function than the store's 1 model"):
        runner.run_grid(_grid(), out, progress=False, backend="ray", address="127.0.0.1:1", ray_timeout=1)
    assert len(built) == 1


def test_a_factory_the_driver_cannot_import_is_left_to_the_remote_workers_with_a_warning(tmp_path, changing, capsys):
    from smoothness.errors import SmoothnessError
    out = tmp_path / "out"
    _stored_but_one(_grid(), out)
    g = _grid()
    for f in (tmp_path / "code").glob("changing.py"):
        f.unlink()
    sys.modules.pop("changing", None)
    importlib.invalidate_caches()
    with pytest.raises(SmoothnessError, match="could not reach the Ray cluster"):
        runner.run_grid(g, out, progress=False, backend="ray", address="127.0.0.1:1", ray_timeout=1)
    err = capsys.readouterr().err
    assert "smoothness: warning: the models to train were not checked here" in err and "cannot import changing" in err


def test_a_snapshot_of_other_tensors_than_the_factory_builds_now_is_refused_not_set_aside(tmp_path, changing):
    out = tmp_path / "out"
    g = _grid()
    cfg = g.configs()[0]
    fam = cfg.family()
    snap = snapshots.Snapshot(1, 1, fam.init([0], 1.0), [], 0.5)
    snapshots.SnapshotDir(out / snapshots.FOLDER).save(cfg, snap)
    changing(5)
    with pytest.raises(ConfigError, match=r"the snapshot of 1 model\(s\) in training .* holds tensors \[\(3, 784\)"):
        runner.run_grid(_grid(), out, progress=False)
    assert snapshots.SnapshotDir(out / snapshots.FOLDER).keys() == {snapshots.config_key(cfg)}


def test_a_factory_whose_activation_changed_is_refused_though_its_tensors_are_the_same(tmp_path, changing):
    """A change that keeps every shape (ReLU to Tanh) changes the outputs of the seed-0 model at fixed points: the
    store's model and the snapshot of one in training are of another function, and run and --dry-run refuse."""
    out = tmp_path / "out"
    _stored_but_one(_grid(), out)
    changing(3, "Tanh")
    for attempt in (lambda: runner.dry_run(_grid(), out), lambda: runner.run_grid(_grid(), out, progress=False)):
        with pytest.raises(ConfigError, match=r"factory changing:net, .* now computes another function than the "
                                              r"store's 1 model\(s\) of it \(the same tensors"):
            attempt()
    changing(3)
    assert runner.run_grid(_grid(), out, progress=False).trained == 1

    fresh = tmp_path / "fresh"
    cfg = _grid().configs()[0]
    fam = cfg.family()
    snapshots.SnapshotDir(fresh / snapshots.FOLDER).save(cfg, snapshots.Snapshot(1, 1, fam.init([0], 1.0), [], 0.5),
                                                         fam.init_outputs())
    changing(3, "Tanh")
    with pytest.raises(ConfigError, match=r"now computes another function than when the snapshot of 1 model\(s\)"):
        runner.run_grid(_grid(), fresh, progress=False)
    assert snapshots.SnapshotDir(fresh / snapshots.FOLDER).keys() == {snapshots.config_key(cfg)}


FEATURES = """import torch
from torch import nn


class Features(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.randn(784, 8)   # fixed random features: a plain attribute, not a parameter
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        return self.head(torch.cos(x.flatten(1) @ self.proj))


def net():
    return Features()
"""

LOG = """import torch
from torch import nn


class Log(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(784, 1)

    def forward(self, x):
        return self.lin(torch.log1p(x.flatten(1)))   # NaN at the fixed standard-normal points of init_outputs


def net():
    return Log()
"""


@pytest.mark.parametrize("name,code", [("features", FEATURES), ("logged", LOG)])
def test_an_unchanged_factory_resumes_whatever_the_process_drew_before_and_with_nan_outputs(tmp_path, monkeypatch,
                                                                                             name, code):
    """A module's fixed random features are built after a seed, so a second process computes the same function;
    outputs stored as JSON null (NaN at the fixed points) compare as non-finite: neither is taken for a change."""
    (tmp_path / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    g = grid.parse({"name": name, "data": "mnist5k", "pairs": [[3, 8]], "n_train": [16], "seeds": [0, 1],
                    "model": {"factory": f"{name}:net"}, "alpha": 1.0, "lr": 0.05, "max_epochs": 1,
                    "measure": {"measure_points": 20, "segments": 4, "points_per_segment": 4}}, name=name)
    out = tmp_path / "out"
    try:
        _stored_but_one(g, out)
        torch.randn(1000)   # the process's generator has moved on, as in another process
        runner.dry_run(g, out)
        assert runner.run_grid(g, out, progress=False).trained == 1
    finally:
        sys.modules.pop(name, None)


def test_a_change_against_a_record_with_non_finite_outputs_is_one_line(tmp_path, changing):
    """A record holds a NaN output as null: a change of the finite ones is still refused in one line, which shows
    the null."""
    import json
    out = tmp_path / "out"
    kept = _stored_but_one(_grid(), out)[0]["key"]
    with sqlite3.connect(out / Store.FILENAME) as db:
        rec = json.loads(db.execute("SELECT record FROM runs WHERE key=?", (kept,)).fetchone()[0])
        rec["init_outputs"][0] = None
        db.execute("UPDATE runs SET record=? WHERE key=?", (json.dumps(rec), kept))
    changing(3, "Tanh")
    with pytest.raises(ConfigError, match=r"now computes another function .* against \[null, "):
        runner.dry_run(_grid(), out)


UNSEEDED = """import torch
from torch import nn

_own = torch.Generator().manual_seed(0)


def net():
    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        m[1].weight.copy_(torch.randn(2, 784, generator=_own))
    return m
"""


def test_a_factory_whose_weights_do_not_follow_the_seed_is_warned_of_and_records_no_outputs(tmp_path, monkeypatch):
    (tmp_path / "unseeded.py").write_text(UNSEEDED)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("unseeded", None)
    g = grid.parse({"name": "u", "data": "mnist5k", "pairs": [[3, 8]], "n_train": [16], "seeds": [0],
                    "model": {"factory": "unseeded:net"}, "alpha": 1.0, "lr": 0.05, "max_epochs": 1,
                    "measure": {"measure_points": 20, "segments": 4, "points_per_segment": 4}}, name="u")
    try:
        with pytest.warns(UserWarning, match="builds other weights after the same torch.manual_seed"):
            runner.run_grid(g, tmp_path / "out", progress=False)
    finally:
        sys.modules.pop("unseeded", None)
    with Store(tmp_path / "out" / Store.FILENAME) as st:
        (rec,) = st.records()
    assert "init_outputs" not in rec and rec["shapes_digest"]


def test_the_dry_run_tells_of_an_unseeded_factory_in_one_warning_line(tmp_path, monkeypatch, capsys):
    from smoothness.cli import main
    (tmp_path / "unseeded.py").write_text(UNSEEDED)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("unseeded", None)
    g = tmp_path / "g.yaml"
    g.write_text("name: u\ndata: mnist5k\npairs: [[3, 8]]\nn_train: [16]\nseeds: 0\nmax_epochs: 1\nalpha: 1.0\n"
                 "lr: 0.05\nmodel: {factory: 'unseeded:net'}\n")
    try:
        assert main(["run", str(g), "--out", str(tmp_path / "out"), "--device", "cpu", "--dry-run"]) == 0
    finally:
        sys.modules.pop("unseeded", None)
    err = capsys.readouterr().err
    assert "smoothness: warning: factory (factory unseeded:net" in err and "UserWarning" not in err, err


def test_a_model_too_large_for_the_machine_is_refused_before_any_model_of_the_grid_trains(tmp_path, monkeypatch,
                                                                                           capsys):
    """The memory of every batch of models is checked before training: a plain model of the grid is not trained
    and stored first, the line names the penalty's points, and the dry run refuses before it times any step."""
    from smoothness.cli import main
    from smoothness.experiments.running import pipeline
    monkeypatch.setattr(pipeline, "memory_budget", lambda device: 10 * 2**30)
    g = tmp_path / "g.yaml"
    g.write_text("name: big\ndata: mnist5k\npairs: [[3, 8]]\nn_train: [64]\nseeds: 0\nmax_epochs: 2\n"
                 "model: {family: cnn, channels: [8, 16]}\nalpha: 1.0\nlr: 0.05\n"
                 "regularizers: [{name: none}, {name: gradient_path_length, lam: [1.0e-3], penalty_points: 10000}]\n")
    for extra in (["--dry-run"], []):
        assert main(["run", str(g), "--out", str(tmp_path / "out"), "--device", "cpu", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "gradient_path_length with 10,000 points per penalty segment" in err, err
        assert "more than the 10,240 MB this machine has for it: lower penalty_points, batch_size" in err, err
    assert not (tmp_path / "out").exists()
