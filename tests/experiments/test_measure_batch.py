"""Trained models measured in batches (the GPU default): same records, stored as trained first, resumable."""
import math

import pytest
import torch

from conftest import run_cli
from smoothness import models, training
from smoothness.errors import ConfigError
from smoothness.experiments.configuration import grid
from smoothness.experiments.running import pipeline, runner
from smoothness.experiments.storage.store import Store
from smoothness.models import init_mlp
from tolerance import MEASURE_REL, assert_close_tensors, kernel_noise

RESUMED_REL = 1e-3   # records of models trained in another batch (up to 40 epochs): weights differ by ~1e-5

GRID = """name: mb
data: mnist5k
pairs: [[3, 8], [1, 7]]
n_train: [32]
seeds: [0, 1, 2]
hidden: 16
lr: 0.05
batch_size: 16
threshold: 1.0e-12
max_epochs: [20, 40]
measure: {points: 60, segments: 12, points_per_segment: 8}
"""
TIMING = {"measure_seconds", "measure_batch", "train_seconds", "versions", "finished_at", "key"}


def _same(a: dict, b: dict, rel: float = MEASURE_REL):
    assert set(a) - TIMING == set(b) - TIMING
    for k in set(a) - TIMING:
        x, y = a[k], b[k]
        if isinstance(x, float) or isinstance(y, float):
            both_nan = (x is None or math.isnan(x)) and (y is None or math.isnan(y))
            assert both_nan or x == pytest.approx(y, rel=rel, abs=1e-7), k
        elif k == "init_outputs":   # computed again by the resumed run, under its kernels
            assert models.same_outputs(x, y), k
        elif k != "params":
            assert x == y, k


def _configs():
    return grid.parse(__import__("yaml").safe_load(GRID)).configs()


@pytest.mark.invariance
def test_measuring_in_batches_gives_each_model_its_record_and_reports_trained_models_first():
    configs = _configs()
    assert len(configs) == 12
    alone = dict(pipeline.iter_train_and_measure(configs, device="cpu", measure_batch=1))
    events = []
    batched = {}
    for i, rec in pipeline.iter_train_and_measure(configs, device="cpu", measure_batch=5,
                                                  on_trained=lambda i, rec, p: events.append(("trained", i))):
        events.append(("measured", i))
        batched[i] = rec
    assert sorted(batched) == list(range(12))
    assert sorted(r["measure_batch"] for r in batched.values()) == [2, 2] + [5] * 10
    for i in range(12):
        _same(alone[i], batched[i])
        assert torch.equal(alone[i]["params"].tensors()[0], batched[i]["params"].tensors()[0])
        assert events.index(("trained", i)) < events.index(("measured", i))
    # the first batch is measured once five models are trained, not at the end
    assert [e for e, _ in events[:6]] == ["trained"] * 5 + ["measured"]


def test_a_batch_waits_no_longer_than_max_wait():
    configs = _configs()[:4]
    got = [rec["measure_batch"] for _, rec in pipeline.iter_train_and_measure(
        configs, device="cpu", measure_batch=100, max_wait=0.0)]
    assert got == [1, 1, 1, 1]


def test_store_keeps_trained_models_until_they_are_measured(tmp_path):
    p = init_mlp([3], (4, 5, 1), 1.0)
    with Store(tmp_path) as st:
        st.add_trained("k1", {"status": "converged", "loss_epoch": float("nan"), "pair": (3, 8)}, p)
        st.add_trained("k2", {"status": "diverged"}, p)
        assert len(st) == 0
        (k1, r1, q1), (k2, _, _) = st.trained()
        assert (k1, k2) == ("k1", "k2") and r1 == {"status": "converged", "loss_epoch": None, "pair": [3, 8]}
        assert all(torch.equal(a, b) for a, b in zip(q1.tensors(), p.tensors()))
        assert st.add("k1", {"status": "converged", "gradient_norm": 1.0})
        assert [k for k, _, _ in st.trained()] == ["k2"]       # moved to runs in the same transaction
        st.add_trained("k1", {"status": "converged"}, p)       # already measured: ignored
        assert [k for k, _, _ in st.trained()] == ["k2"]


@pytest.mark.invariance
def test_grid_stopped_between_training_and_measuring_resumes_without_training_again(tmp_path, monkeypatch):
    g = grid.parse(__import__("yaml").safe_load(GRID))
    ref = runner.run_grid(g, tmp_path / "ref", device="cpu", progress=False, measure_batch=1)
    assert ref.trained == 12
    with Store(tmp_path / "ref") as st:
        reference = {r["key"]: r for r in st.records()}

    real = pipeline.measure_models

    def broken(*a, **k):
        raise RuntimeError("measuring failed")
    monkeypatch.setattr(pipeline, "measure_models", broken)
    with pytest.raises(RuntimeError, match="measuring failed"):
        runner.run_grid(g, tmp_path / "exp", device="cpu", progress=False, measure_batch=5)
    with Store(tmp_path / "exp") as st:
        assert len(st) == 0 and len(st.trained()) == 5           # trained, stored, not yet measured

    monkeypatch.setattr(pipeline, "measure_models", real)
    trained_now = []
    real_iter = training.BatchedTrainer.iter_train

    def counting(self, specs, progress=None, **kw):
        trained_now.append(len(specs))
        return real_iter(self, specs, progress, **kw)
    monkeypatch.setattr(training.BatchedTrainer, "iter_train", counting)
    with kernel_noise():   # the resumed run trains in another batch: allow what other kernels would do
        s = runner.run_grid(g, tmp_path / "exp", device="cpu", progress=False, measure_batch=5)
    assert s.trained == 12 and s.stored_before == 0 and sum(trained_now) == 7
    with Store(tmp_path / "exp") as st, Store(tmp_path / "ref") as ref_st:
        assert st.trained() == []
        got = {r["key"]: r for r in st.records()}
        assert set(got) == set(reference)
        for k in got:
            _same(got[k], reference[k], rel=RESUMED_REL)
            assert_close_tensors(st.params(k).tensors(), ref_st.params(k).tensors())


def test_invalid_measure_batch_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="measure batch"):
        runner.run_grid(grid.preset("smoke"), tmp_path, device="cpu", progress=False, measure_batch=0)
    r = run_cli("run", "smoke", "--out", tmp_path, "--device", "cpu", "--measure-batch", "-1")
    assert r.returncode == 2 and "invalid measure batch" in r.stderr and "Traceback" not in r.stderr
