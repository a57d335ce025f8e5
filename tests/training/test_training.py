import numpy as np
import pytest
import torch

from conftest import spec
from smoothness import models, training
from smoothness.data import images
from smoothness.errors import ConfigError
from smoothness.training import step
from tolerance import OUTCOME_REL, assert_same_outcome, assert_same_trajectory, kernel_noise


@pytest.fixture(scope="module")
def task():
    return images.binary_task("mnist5k", 0, 1)


def test_small_mnist_task_converges_below_threshold(task):
    s = spec(task, 64, 0)
    (r,) = training.train_models(task.pool_x, [s])
    assert r.status == training.CONVERGED
    assert r.loss_epoch < 1e-5
    assert 1 < r.epochs < 25_000 and r.steps == r.epochs  # 64 points, batch 64: one step per epoch
    # The full-pass training loss at the end is of the same order; test loss is far larger.
    full = float(models.dataset_mse(r.params, task.pool_x[s.indices], s.targets)[0])
    assert full < 1e-4
    assert float(models.dataset_mse(r.params, task.heldout_x, task.heldout_y)[0]) > full


def test_epoch_cap_gives_not_converged(task):
    (r,) = training.train_models(task.pool_x, [spec(task, 128, 0, max_epochs=3)])
    assert r.status == training.NOT_CONVERGED and r.epochs == 3 and r.steps == 6
    assert np.isfinite(r.loss_epoch) and r.loss_epoch > 1e-5


@pytest.mark.invariance
def test_huge_learning_rate_diverges_without_disturbing_the_batch(task):
    good = spec(task, 64, 1, max_epochs=50)
    bad = spec(task, 64, 2, lr=1e4, alpha=1.0, max_epochs=50)
    alone = training.train_models(task.pool_x, [good])[0]
    res = training.train_models(task.pool_x, [bad, good])
    assert res[0].status == training.DIVERGED
    assert res[0].epochs < 50
    assert_same_trajectory(alone, res[1])


@pytest.mark.invariance
def test_model_alone_and_in_a_batch_follow_the_same_trajectory(task):
    # Short run: the batch may round differently in the last bit (another GEMM kernel); kernel_noise
    # makes it do so here too, so the tolerance is checked against what other CPUs do.
    target = spec(task, 128, 0, max_epochs=30)
    others = [spec(task, 64, 5, max_epochs=20), spec(task, 256, 1, max_epochs=25), spec(task, 192, 2, lr=0.02, max_epochs=15)]
    alone = training.train_models(task.pool_x, [target])[0]
    batch = training.train_models(task.pool_x, [others[0], target, *others[1:]])[1]
    assert_same_trajectory(alone, batch)
    with kernel_noise():
        noisy = training.train_models(task.pool_x, [others[0], target, *others[1:]])[1]
    assert_same_trajectory(alone, noisy)
    assert not torch.equal(noisy.params.weights[0], alone.params.weights[0])   # the noise did act


@pytest.mark.invariance
def test_the_same_batch_trained_twice_is_bit_for_bit_the_same(task):
    specs = [spec(task, 64, 5, max_epochs=20), spec(task, 128, 0, max_epochs=30), spec(task, 96, 2, lr=0.02)]
    first = training.train_models(task.pool_x, specs)
    again = training.train_models(task.pool_x, specs)
    for a, b in zip(first, again):
        assert (a.status, a.epochs, a.steps, a.loss_epoch) == (b.status, b.epochs, b.steps, b.loss_epoch)
        assert all(torch.equal(u, v) for u, v in zip(a.params.tensors(), b.params.tensors()))


@pytest.mark.invariance
def test_a_whole_run_alone_and_in_a_noisy_batch_ends_alike(task):
    # To the loss threshold (about 1,400 epochs): last-bit differences grow, the outcome stays.
    kw = dict(widths=(784, 32, 1))
    target = spec(task, 64, 1, lr=0.05, threshold=1e-3)
    alone = training.train_models(task.pool_x, [target], **kw)[0]
    with kernel_noise(2):
        batch = training.train_models(task.pool_x, [spec(task, 32, 3, lr=0.05, threshold=1e-3), target], **kw)[1]
    assert alone.status == training.CONVERGED
    assert_same_outcome(vars(alone), vars(batch), ["loss_epoch"])
    final = [float(models.dataset_mse(r.params, task.pool_x[target.indices], target.targets)[0]) for r in (alone, batch)]
    assert final[1] == pytest.approx(final[0], rel=OUTCOME_REL["loss_train"])


@pytest.mark.invariance
def test_refilling_a_small_batch_gives_the_same_models(task):
    specs = [spec(task, n, s, max_epochs=30) for n in (64, 128) for s in (0, 1, 2)]
    full = training.train_models(task.pool_x, specs)
    seen = []
    narrow = training.train_models(task.pool_x, specs, max_batch=2, on_finish=lambda r: seen.append(r.index))
    assert sorted(seen) == list(range(len(specs)))
    for a, b in zip(full, narrow):
        assert_same_trajectory(a, b)


@pytest.mark.invariance
@pytest.mark.parametrize("reg", ["none", "weights_product"])
def test_splitting_a_step_into_blocks_of_models_gives_the_same_models(task, reg):
    lam = 0.0 if reg == "none" else 1e-3
    specs = [spec(task, n, s, max_epochs=20, regularizer=reg, lam=lam) for n in (64, 100) for s in (0, 1, 2)]
    whole = training.BatchedTrainer(task.pool_x, block_models=len(specs)).train(specs)
    blocks = training.BatchedTrainer(task.pool_x, block_models=2).train(specs)
    for a, b in zip(whole, blocks):
        assert_same_trajectory(a, b)


@pytest.mark.invariance
def test_shuffles_computed_ahead_equal_those_computed_each_epoch(task, monkeypatch):
    specs = [spec(task, n, s, max_epochs=45) for n in (64, 130) for s in (0, 3)]
    ahead = training.train_models(task.pool_x, specs, max_batch=3)
    monkeypatch.setattr(step, "AHEAD_ELEMS", 1)  # one epoch at a time
    each = training.train_models(task.pool_x, specs, max_batch=3)
    for a, b in zip(ahead, each):
        assert a.epochs == b.epochs == 45
        assert all(torch.equal(u, v) for u, v in zip(a.params.tensors(), b.params.tensors()))


def test_every_example_is_seen_once_per_epoch():
    # The epoch order of each model is a permutation of its own rows, padding last; epochs differ.
    from smoothness.runtime import rng
    n = torch.tensor([5, 8, 3])
    perm = rng.permutation_keys(n, 8, torch.tensor([[1], [2], [3]]), rng.STREAM_SHUFFLE, 0)
    for row, k in zip(perm, n.tolist()):
        assert sorted(row[:k].tolist()) == list(range(k))
        assert row[k:].tolist() == list(range(k, 8))
    again = rng.permutation_keys(n, 8, torch.tensor([[1], [2], [3]]), rng.STREAM_SHUFFLE, 1)
    assert not torch.equal(perm, again)


def test_partial_last_batch_is_used(task):
    # 96 points with batch 64: two steps per epoch (64 + 32).
    (r,) = training.train_models(task.pool_x, [spec(task, 96, 0, max_epochs=4)])
    assert r.steps == 8


def test_bad_specs_are_rejected(task):
    with pytest.raises(ValueError):
        training.TrainSpec(torch.tensor([0, 1]), torch.tensor([1.0]))
    for seed in (-1, 2 ** 32, 1.5):
        with pytest.raises(ConfigError, match="seed"):
            training.TrainSpec(torch.tensor([0]), torch.tensor([1.0]), seed=seed)
    with pytest.raises(ValueError, match="range"):
        training.train_models(task.pool_x, [training.TrainSpec(torch.tensor([10**6]), torch.tensor([1.0]))])
