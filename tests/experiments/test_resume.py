"""Training that stops part way and goes on from a snapshot ends exactly where it would have ended without stopping."""
import dataclasses

import numpy as np
import pytest
import torch

from conftest import corrupt_member, run_cli, spec, tiny
from smoothness import training
from smoothness.data import images
from smoothness.experiments.configuration.grid import config_key
from smoothness.experiments.running import distributed, runner
from smoothness.experiments.storage import snapshots as snapshots_mod
from smoothness.experiments.storage.store import Store
from tolerance import assert_same_trajectory


@pytest.fixture(scope="module")
def task():
    return images.binary_task("mnist5k", 0, 1)


def _train(task, specs, snapshots=None, **kw):
    """Train specs as one batched program (snapshots at every epoch end if a dict is given: index -> list)."""
    trainer = training.BatchedTrainer(task.pool_x, kw.pop("widths", (784, 32, 1)), kw.pop("batch_size", 32),
                                      snapshot_every=1e-9 if snapshots is not None else None, **kw)
    out = [None] * len(specs)
    on_snapshot = None if snapshots is None else (lambda i, s: snapshots.setdefault(i, []).append(s))
    for r in trainer.iter_train(specs, on_snapshot=on_snapshot):
        out[r.index] = r
    return out


def _same(a, b):
    assert (a.status, a.epochs, a.steps, a.loss_epoch) == (b.status, b.epochs, b.steps, b.loss_epoch)
    assert all(torch.equal(u, v) for u, v in zip(a.params.tensors(), b.params.tensors()))


@pytest.mark.invariance
@pytest.mark.parametrize("kw", [dict(), dict(regularizer="gradient_norm", lam=1e-3),
                                dict(regularizer="gradient_path_length", lam=1e-4, lr=0.05),
                                dict(optimizer="adam"), dict(optimizer="sam", lr=0.05)],
                         ids=["sgd", "gn", "gpl", "adam", "sam"])
def test_a_model_resumed_from_any_snapshot_ends_bit_for_bit_as_the_uninterrupted_one(task, kw):
    s = spec(task, 96, 3, max_epochs=12, threshold=1e-4, **kw)
    snaps = {}
    (whole,) = _train(task, [s], snaps)
    assert [x.epoch for x in snaps[0]] == list(range(1, 12)) and [x.steps for x in snaps[0]] == [3 * e for e in range(1, 12)]
    for snap in (snaps[0][0], snaps[0][6]):
        (resumed,) = _train(task, [dataclasses.replace(s, resume=snap)])
        _same(whole, resumed)


@pytest.mark.invariance
def test_resumed_and_fresh_models_share_a_batch(task):
    specs = [spec(task, n, seed, max_epochs=20) for n, seed in ((64, 0), (96, 1), (128, 2))]
    snaps = {}
    whole = _train(task, specs, snaps)
    mixed = [specs[0], dataclasses.replace(specs[1], resume=snaps[1][4]), dataclasses.replace(specs[2], resume=snaps[2][9])]
    for a, b in zip(whole, _train(task, mixed)):
        assert_same_trajectory(a, b)


def test_a_snapshot_carries_the_time_spent_and_is_taken_no_more_often_than_asked(task):
    s = spec(task, 64, 0, max_epochs=40)
    trainer = training.BatchedTrainer(task.pool_x, (784, 32, 1), 32, snapshot_every=3600.0)
    seen = []
    (r,) = list(trainer.iter_train([s], on_snapshot=lambda i, x: seen.append(x)))
    assert seen == [] and r.epochs == 40
    snap = training.Snapshot(5, 10, _train(task, [dataclasses.replace(s, max_epochs=5)])[0].params.to("cpu"), [], 100.0)
    (r,) = _train(task, [dataclasses.replace(s, resume=snap)])
    assert r.seconds >= 100.0 and r.epochs == 40 and r.steps == 80


def test_a_snapshot_that_does_not_fit_is_refused(task):
    s = spec(task, 64, 0, max_epochs=10)
    snaps = {}
    _train(task, [s], snaps, widths=(784, 16, 1))
    with pytest.raises(ValueError, match="784-16-1 net"):
        _train(task, [dataclasses.replace(s, resume=snaps[0][2])])
    with pytest.raises(ValueError, match="epoch 9 cannot resume a model whose cap is 5"):
        dataclasses.replace(s, max_epochs=5, resume=snaps[0][8])
    assert np.isfinite(snaps[0][2].seconds)


# -- a grid stopped part way goes on from its snapshots ----------------------------------------------------------

GRID = dict(n_train=[32, 48], max_epochs=60, threshold=1e-6, regularizers=[{"name": "gradient_norm", "lam": [0, 1e-4]}])


def _records(out):
    with Store(out, create=False) as st:
        return {r["key"]: r for r in st.records()}


def test_a_grid_killed_part_way_goes_on_from_its_snapshots_and_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    g = tiny(**GRID)
    whole = tmp_path / "whole"
    runner.run_grid(g, whole, device="cpu", progress=False, snapshot_every=None)
    assert not (whole / snapshots_mod.FOLDER).exists()

    out, saved = tmp_path / "out", []
    real = snapshots_mod.SnapshotDir.save

    def save(self, cfg, snap, init_outputs=None):
        real(self, cfg, snap, init_outputs)
        saved.append(snap.epoch)
        if len(saved) == 25:   # a kill part way through the first model, with snapshots on disk
            raise KeyboardInterrupt
    monkeypatch.setattr(snapshots_mod.SnapshotDir, "save", save)
    with pytest.raises(KeyboardInterrupt):
        runner.run_grid(g, out, device="cpu", progress=False, snapshot_every=1e-9)
    monkeypatch.setattr(snapshots_mod.SnapshotDir, "save", real)
    left = {p.name for p in (out / snapshots_mod.FOLDER).iterdir()}
    assert left and all(n.endswith(".pt") for n in left)
    line = runner.dry_run(g, out)
    assert f"to train, {len(left)} of them from a snapshot (epoch" in line and line.count("snapshot") == 1, line
    # the work left counts a snapshotted model from its snapshot's epoch, every other model from its first
    full = {config_key(c): distributed.expected_steps(c) for c in g.configs()}
    epochs = snapshots_mod.SnapshotDir(out / snapshots_mod.FOLDER).epochs(list(full))
    stored = set()
    if (out / Store.FILENAME).exists():
        with Store(out / Store.FILENAME, create=False) as st:
            stored = st.keys()
    work = {config_key(c): w for c, w in runner.work_left(g, out)}
    assert work.keys() == full.keys() - stored and epochs and epochs.keys() <= work.keys()
    for k, w in work.items():
        assert w == pytest.approx(full[k] * (60 - epochs.get(k, 0)) / 60), k
    note = runner.interrupted_note(g, out)   # what an interrupted `run` says
    assert f"{len(left)} more in training (epoch" in note and f") kept in {out / snapshots_mod.FOLDER}" in note, note
    assert "nothing is stored" not in note and note.endswith("run the same command again to go on from them")

    runner.run_grid(g, out, device="cpu", progress=False, snapshot_every=1e-9)
    a, b = _records(whole), _records(out)
    assert a.keys() == b.keys() and not (out / snapshots_mod.FOLDER).exists()
    resumed = [k for k in b if "resumed_at_epoch" in b[k]]
    assert resumed and all(b[k]["resumed_at_epoch"] > 0 for k in resumed)
    for k in a:   # every outcome and measure alike, bit for bit; only timings differ
        same = [f for f, v in a[k].items() if "seconds" not in f and f not in ("finished_at", "versions")]
        assert len(same) > 20 and {"gradient_norm", "function_path_length", "epochs", "loss_epoch"} <= set(same)
        assert {f: a[k][f] for f in same} == {f: b[k][f] for f in same}, k


def test_an_unreadable_snapshot_is_set_aside_and_its_model_trained_from_the_start(tmp_path, capsys):
    g = tiny(**GRID)
    cfg = g.configs()[0]
    snaps = snapshots_mod.SnapshotDir(tmp_path / "exp" / snapshots_mod.FOLDER, 60)
    snaps.path.mkdir(parents=True)
    snaps.file(runner.config_key(cfg)).write_bytes(b"not a snapshot")
    assert snaps.load(cfg) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not used" in err and "starts from its first epoch" in err
    assert (snaps.path / f"{runner.config_key(cfg)}.pt.unreadable").exists()
    # a snapshot of another model under this model's name is not used either
    other = g.configs()[1]
    snap = training.Snapshot(3, 6, training.train_models(torch.zeros(4, 784), [training.TrainSpec(
        [0, 1], [1.0, -1.0], max_epochs=3)], widths=tuple(other.widths), batch_size=16)[0].params.to("cpu"), [], 1.0)
    snaps.save(other, snap)
    snaps.file(runner.config_key(other)).rename(snaps.file(runner.config_key(cfg)))
    assert snaps.load(cfg) is None and "not the snapshot of model" in capsys.readouterr().err


def test_a_snapshot_with_a_damaged_member_is_set_aside_not_trusted(tmp_path, capsys):
    from smoothness.models import init_mlp
    g = tiny(**GRID)
    cfg = g.configs()[0]
    snaps = snapshots_mod.SnapshotDir(tmp_path / "snapshots", 60)
    snaps.save(cfg, training.Snapshot(3, 9, init_mlp([0], cfg.widths), [], 1.0))
    member = corrupt_member(snaps.file(runner.config_key(cfg)))   # the first layer's weights: still loads
    assert snaps.load(cfg) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"the member {member} does not match its CRC-32" in err, err
    assert (snaps.path / f"{runner.config_key(cfg)}.pt.unreadable").exists()


def test_the_command_line_takes_the_snapshot_period(tmp_path):
    r = run_cli("run", "smoke", "--out", tmp_path / "x", "--snapshot-every", "-1")
    assert r.returncode == 2 and "0 or more" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("run", "--help")
    assert "--snapshot-every" in r.stdout


def test_what_a_killed_writer_leaves_is_removed_with_its_model(tmp_path):
    snaps = snapshots_mod.SnapshotDir(tmp_path / "snapshots", 60)
    snaps.path.mkdir()
    (snaps.path / ".k1.123.tmp").write_bytes(b"half")
    (snaps.path / "k1.pt").write_bytes(b"x")
    (snaps.path / "k2.pt").write_bytes(b"x")
    assert snaps.keys() == {"k1", "k2"}
    snaps.remove("k1")
    assert sorted(p.name for p in snaps.path.iterdir()) == ["k2.pt"]
    snaps.remove("k2")
    assert not snaps.path.exists()


def test_without_a_terminal_a_long_wait_gets_a_line_with_the_snapshots_epochs(tmp_path):
    import io

    from smoothness.experiments.running.progress import GridProgress, snapshot_note
    from smoothness.models import init_mlp
    g = tiny(**GRID)
    keys = [runner.config_key(c) for c in g.configs()]
    snaps = snapshots_mod.SnapshotDir(tmp_path / "snapshots", every=1)
    assert snapshot_note(snaps, keys) == ""
    for cfg, epoch in zip(g.configs()[:2], (7, 1234)):
        snaps.save(cfg, training.Snapshot(epoch, epoch * 3, init_mlp([0], cfg.widths), [], 1.0))
    (tmp_path / "snapshots" / f"{keys[2]}.pt").write_bytes(b"half written")   # unreadable: left out
    assert snapshot_note(snaps, keys) == "2 in snapshots (epochs 7 and 1,234)"
    assert snapshot_note(snaps, keys[1:]) == "1 in snapshots (epoch 1,234)"

    stream = io.StringIO()
    bar = GridProgress(4, True, stream, every=0.0, in_training=lambda: snapshot_note(snaps, keys))
    bar.trainer({"active": 3, "chunks": 2, "label": "queued or running"})
    line = stream.getvalue()
    assert line.startswith("[0/4] no model finished in the last ") and line.count("\n") == 1
    assert "; queued or running 3; 2 in snapshots (epochs 7 and 1,234); elapsed " in line
    stream = io.StringIO()
    trainer_bar = GridProgress(4, True, stream, every=0.0, in_training=lambda: snapshot_note(snaps, keys))
    trainer_bar.trainer({"active": 2, "epoch": 1502, "loss": 2.34567e-5, "done": 0, "total": 4})
    assert "; running 2 (at epoch 1,502, lowest epoch loss 2.35e-05); 2 in snapshots (epochs 7 and 1,234)" \
        in stream.getvalue()
    quiet = GridProgress(4, True, io.StringIO(), every=600.0)
    quiet.trainer({"active": 3, "chunks": 2})
    assert quiet.stream.getvalue() == ""   # not before the period
