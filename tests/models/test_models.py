import math

import pytest
import torch

from smoothness import models
from smoothness.models import forward, init_mlp, sgd_update_, two_layer_relu


def test_init_is_alpha_scaled_glorot_uniform_with_zero_biases():
    p = init_mlp(list(range(4)), (784, 256, 1), alpha=0.01)
    for (n_in, n_out), w, b in zip([(784, 256), (256, 1)], p.weights, p.biases):
        bound = math.sqrt(6 * 0.01 / (n_in + n_out))
        assert w.shape == (4, n_out, n_in)
        assert float(w.abs().max()) <= bound
        assert float(w.abs().max()) > 0.95 * bound
        # variance of U[-l, l] is l^2 / 3
        assert float(w.var()) == pytest.approx(bound ** 2 / 3, rel=0.1 if n_out > 1 else 0.3)
        assert torch.count_nonzero(b) == 0


def test_alpha_one_is_glorot_and_alpha_scales_the_bound():
    a = init_mlp([7], (20, 10, 1), alpha=1.0)
    b = init_mlp([7], (20, 10, 1), alpha=0.04)
    assert torch.allclose(b.weights[0], a.weights[0] * 0.2, atol=1e-7)


def test_init_depends_on_seed_not_on_batch():
    alone = init_mlp([3], (10, 6, 1))
    batch = init_mlp([9, 3, 5], (10, 6, 1))
    assert torch.equal(alone.weights[0][0], batch.weights[0][1])
    assert not torch.equal(batch.weights[0][0], batch.weights[0][1])


def test_two_layer_relu_computes_eq_12():
    W1 = torch.tensor([[1.0, -1.0], [0.5, 2.0], [0.0, 1.0]])
    b1 = torch.tensor([0.1, -0.2, 0.3])
    w2 = torch.tensor([2.0, -1.0, 0.5])
    f = two_layer_relu(W1, b1, w2, 0.7)
    x = torch.randn(11, 2)
    expected = torch.relu(x @ W1.T + b1) @ w2 + 0.7
    assert f(x).shape == (11,)
    assert torch.allclose(f(x), expected, atol=1e-6)
    assert f(x[0]).shape == ()
    with pytest.raises(ValueError, match="W1"):
        two_layer_relu(W1, b1[:2], w2, 0.0)


def test_fused_sgd_update_matches_autograd():
    p = init_mlp([1, 2], (7, 5, 4, 1), alpha=1.0)
    x, y = torch.randn(2, 9, 7), torch.randn(2, 9)
    lr = torch.tensor([0.1, 0.03])
    before = p.clone()
    out, acts, pres = forward(p, x, cache=True)
    sgd_update_(p, acts, pres, lr[:, None] * 2 * (out - y) / 9)
    for m in range(2):
        f = models.ReLUMLP.from_stack(before, m)
        ((f(x[m]) - y[m]) ** 2).mean().backward()
        for k in range(3):
            assert torch.allclose(p.weights[k][m], f.weights[k] - lr[m] * f.weights[k].grad, atol=1e-6)
            assert torch.allclose(p.biases[k][m], f.biases[k] - lr[m] * f.biases[k].grad, atol=1e-6)


def test_stack_round_trip_and_select():
    p = init_mlp([1, 2, 3], (4, 3, 1), alpha=1.0)
    f = models.ReLUMLP.from_stack(p, 2)
    q = f.stack()
    assert torch.equal(q.weights[0][0], p.weights[0][2])
    s = models.MLPStack.from_state_dict(p.select([0, 2]).state_dict())
    assert s.n_models == 2 and s.widths == (4, 3, 1) and s.depth == 1


def test_mlp_rejects_vector_output():
    with pytest.raises(ValueError, match="scalar"):
        models.mlp((4, 3, 2))


def test_a_data_sets_loss_is_the_mean_per_example_loss_whatever_the_chunks():
    from smoothness.models import dataset_mse, losses, mse
    torch.manual_seed(0)
    p = init_mlp([1, 2, 3], (5, 7, 1), alpha=1.0)
    x, y = torch.randn(3, 50, 5), torch.randn(3, 50)
    want = mse(p, x, y)[0]
    for chunk in (7, 50, 4096):
        assert torch.allclose(dataset_mse(p, x, y, chunk=chunk), want, rtol=1e-6)
    assert torch.allclose(dataset_mse(p, x[0], y[0]), mse(p, x[0].expand(3, -1, -1), y[0].expand(3, -1))[0], rtol=1e-6)
    out = torch.randn(2, 30, 4)
    labels = torch.randint(0, 4, (30,)).float()
    for loss in ("mse", "cross_entropy"):
        got = losses.dataset_loss(lambda xb: out[:, xb], torch.arange(30), labels, loss, chunk=8)
        assert torch.allclose(got, losses.per_example(out, labels.expand(2, -1), loss).mean(1), rtol=1e-6)
    with pytest.warns(DeprecationWarning, match="training.mse is now models.dataset_mse"):
        from smoothness import training
        assert training.mse is dataset_mse
