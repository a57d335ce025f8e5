"""The trainer's step, epoch end and admission of new models never wait for the device.

On a GPU a value read back (.item(), .cpu(), bool(t), a boolean-mask index, nonzero) or a host-to-device copy
from pageable memory (torch.tensor(..., device=...)) makes the host wait until every queued step has run. On a
CPU there is no such wait to observe, so the test runs the same code with those calls patched to raise inside
BatchedTrainer._step, _epoch_end and _admit; the only host-to-device path they may use is trainstate.upload (pinned,
non-blocking on CUDA). Where CUDA is present, the same run is checked with torch.cuda.set_sync_debug_mode.
"""
import contextlib
import threading

import numpy as np
import pytest
import torch

from smoothness.training import state as trainstate
from smoothness.training import step as trainstep
from smoothness.training import trainer as training
from tolerance import assert_same_trajectory

_ALLOWED = threading.local()
_BOOL_INDEX = "boolean-mask index (nonzero)"


def _raise(what):
    raise AssertionError(f"a host-device transfer in the training step: {what}")


def _guarded(name, fn, check=None):
    def wrapper(*args, **kwargs):
        if not getattr(_ALLOWED, "on", False) and (check is None or check(*args, **kwargs)):
            _raise(name)
        return fn(*args, **kwargs)
    return wrapper


def _host_data(data, *args, **kwargs):   # torch.as_tensor of an existing tensor copies nothing
    return not isinstance(data, torch.Tensor)


def _bool_index(self, index, *args):
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _to_device(self, *args, **kwargs):
    return "device" in kwargs or any(isinstance(a, (str, torch.device)) for a in args)


_PATCHES = [(torch, "tensor", None), (torch, "as_tensor", _host_data), (torch, "from_numpy", None),
            (torch, "nonzero", None), (torch.Tensor, "nonzero", None), (torch.Tensor, "item", None),
            (torch.Tensor, "cpu", None), (torch.Tensor, "numpy", None), (torch.Tensor, "tolist", None),
            (torch.Tensor, "__bool__", None), (torch.Tensor, "__float__", None), (torch.Tensor, "__int__", None),
            (torch.Tensor, "__index__", None), (torch.Tensor, "__getitem__", _bool_index),
            (torch.Tensor, "__setitem__", _bool_index), (torch.Tensor, "masked_select", None),
            (torch.Tensor, "to", _to_device)]


@contextlib.contextmanager
def no_host_transfers():
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in _PATCHES]
    try:
        for (owner, name, check), (_, _, fn) in zip(_PATCHES, saved):
            setattr(owner, name, _guarded(f"{getattr(owner, '__name__', owner)}.{name}", fn, check))
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def _allowed(fn):
    def wrapper(*args, **kwargs):
        _ALLOWED.on = True
        try:
            return fn(*args, **kwargs)
        finally:
            _ALLOWED.on = False
    return wrapper


def _watch(monkeypatch, guard):
    """Run BatchedTrainer._step, _epoch_end and _admit inside `guard`, trainstate.upload allowed; count the calls."""
    calls = {"_step": 0, "_epoch_end": 0, "_admit": 0}
    for name in calls:
        orig = getattr(training.BatchedTrainer, name)

        def watched(self, *args, _orig=orig, _name=name):
            calls[_name] += 1
            with guard():
                return _orig(self, *args)
        monkeypatch.setattr(training.BatchedTrainer, name, watched)
    monkeypatch.setattr(training, "upload", _allowed(trainstate.upload))
    monkeypatch.setattr(trainstate, "upload", _allowed(trainstate.upload))
    monkeypatch.setattr(trainstep, "upload", _allowed(trainstate.upload))
    return calls


def _specs(optimizer="sgd", regularizer="none", lam=0.0):
    """Models of sizes 5..70 (partial last batches, epochs of 1..5 steps), one of which diverges, one stops at
    its cap, the others converge or not by their thresholds."""
    g = torch.Generator().manual_seed(0)
    lr = 0.01 if optimizer == "adam" else 0.1
    specs = []
    for i, n in enumerate((5, 16, 23, 40, 70)):
        idx = torch.randperm(120, generator=g)[:n]
        specs.append(training.TrainSpec(idx, torch.randn(n, generator=g), seed=i, lr=lr, max_epochs=6 + 3 * i,
                                        threshold=0.05 * (i % 3), optimizer=optimizer, regularizer=regularizer,
                                        lam=lam))
    specs.append(training.TrainSpec(torch.arange(30), torch.randn(30, generator=g) * 1e3, seed=9, lr=50.0,
                                    max_epochs=20, optimizer=optimizer, regularizer=regularizer, lam=lam))
    return specs


def _pool():
    return torch.randn(120, 12, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("optimizer,regularizer", [("sgd", "none"), ("adam", "none"), ("sam", "none"),
                                                   ("momentum", "gradient_norm"),
                                                   ("sgd", "function_path_length")])
def test_no_value_is_read_back_or_uploaded_from_pageable_memory_in_a_step_or_an_epoch_end(monkeypatch, optimizer,
                                                                                         regularizer):
    specs = _specs(optimizer, regularizer, 1e-3 if regularizer != "none" else 0.0)
    ref = training.BatchedTrainer(_pool(), widths=(12, 8, 1), batch_size=16, max_batch=4).train(specs)
    calls = _watch(monkeypatch, no_host_transfers)
    monkeypatch.setattr(trainstep, "AHEAD_ELEMS", 100)   # refill the look-ahead often
    got = training.BatchedTrainer(_pool(), widths=(12, 8, 1), batch_size=16, max_batch=4).train(specs)
    assert calls["_step"] > 50 and calls["_epoch_end"] > 20 and calls["_admit"] >= 2   # admitted as others finish
    assert "not_converged" in {r.status for r in got}
    assert optimizer != "sgd" or "diverged" in {r.status for r in got}
    for a, b in zip(ref, got):
        assert (a.status, a.epochs, a.steps) == (b.status, b.epochs, b.steps)
        if a.status != "diverged":
            assert all(torch.equal(u, v) for u, v in zip(a.params.tensors(), b.params.tensors()))


def test_the_guard_catches_a_read_back():
    t = torch.ones(3)
    with no_host_transfers():
        for bad in (lambda: t.sum().item(), lambda: bool(t.any()), lambda: t[t > 0], lambda: t.cpu(),
                    lambda: torch.tensor([1.0]), lambda: float(t[0]), lambda: t.to("cpu")):
            with pytest.raises(AssertionError, match="host-device transfer"):
                bad()
        t[0:1] = 2.0   # slicing and in-place device work stay allowed
        torch.as_tensor(t)


@pytest.mark.parametrize("lag,every", [(1, 1), (3, 5), (7, 16)])
def test_reading_the_status_late_changes_no_model(lag, every):
    """As on CUDA: finished models stay frozen in the batch until a late reading, and the batch is compacted in
    buckets (when at most half its rows are live) instead of at once. Every model ends as when read at once."""
    specs = _specs()
    ref = training.BatchedTrainer(_pool(), widths=(12, 8, 1), batch_size=16).train(specs)
    late = training.BatchedTrainer(_pool(), widths=(12, 8, 1), batch_size=16, poll_every=every)
    late.poll_lag = lag
    infos = []
    got = late.train(specs, progress=infos.append)
    assert infos[-1]["done"] == infos[-1]["total"] == len(specs) and infos[-1]["active"] == 0
    assert all(0 <= i["active"] <= len(specs) - i["done"] for i in infos)
    for a, b in zip(ref, got):
        if a.status == "diverged":
            assert b.status == "diverged" and (a.epochs, a.steps) == (b.epochs, b.steps)
        else:
            assert_same_trajectory(a, b)


def test_a_frozen_model_keeps_its_weights_bit_for_bit():
    """A model that finished stays in the batch with learning rate 0 until the host reads it: its weights are
    exactly those at its finish, whatever the optimizer does to its state."""
    for optimizer in ("sgd", "adam", "momentum"):
        specs = _specs(optimizer)[:5]
        ref = training.BatchedTrainer(_pool(), widths=(12, 8, 1), batch_size=16).train(specs)
        late = training.BatchedTrainer(_pool(), widths=(12, 8, 1), batch_size=16, poll_every=50)
        late.poll_lag = 5
        got = late.train(specs)
        for a, b in zip(ref, got):
            assert (a.status, a.epochs, a.steps, a.loss_epoch) == (b.status, b.epochs, b.steps, b.loss_epoch)
            assert all(torch.equal(u, v) for u, v in zip(a.params.tensors(), b.params.tensors()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the CPU form of this test is above)")
def test_on_cuda_no_step_or_epoch_end_synchronizes(monkeypatch):
    @contextlib.contextmanager
    def sync_error():
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")

    calls = _watch(monkeypatch, sync_error)
    got = training.BatchedTrainer(_pool(), widths=(12, 8, 1), batch_size=16, device="cuda").train(_specs())
    assert calls["_step"] > 50
    assert np.all([r.epochs > 0 for r in got])
