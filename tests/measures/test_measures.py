import itertools

import numpy as np
import pytest
import torch
from torch import nn

from smoothness import measures, models
from smoothness.measures import inputspace as ins
from smoothness.measures import registry
from smoothness.models import input_gradient, two_layer_relu


def affine(w, c=0.3):
    lin = nn.Linear(len(w), 1)
    with torch.no_grad():
        lin.weight[:] = torch.as_tensor(w, dtype=torch.float32)[None]
        lin.bias[:] = c
    return nn.Sequential(lin)


def opaque(f):
    """Hide f's type so that the measures use autograd instead of the closed form."""
    return lambda x: f(x).reshape(-1)


W = [1.0, -2.0, 2.0, 0.5]
X = torch.randn(40, 4)


@pytest.mark.parametrize("wrap", [lambda f: f, opaque])
def test_gradient_norm_of_affine_is_norm_of_w(wrap):
    f = wrap(affine(W))
    assert measures.gradient_norm(f, X) == pytest.approx(float(np.linalg.norm(W)), rel=1e-6)
    assert measures.gradient_norm_squared(f, X) == pytest.approx(float(np.dot(W, W)), rel=1e-6)


@pytest.mark.parametrize("wrap", [lambda f: f, opaque])
def test_gradient_path_length_of_affine_is_zero(wrap):
    assert measures.gradient_path_length(wrap(affine(W)), X, segments=50, points=20) == pytest.approx(0.0, abs=1e-6)


def test_fpl_of_linear_function_on_a_segment_is_w_dot_b_minus_a():
    a, b = torch.randn(4), torch.randn(4)
    f = affine(W, c=0.0)
    expected = abs(float(torch.tensor(W) @ (b - a)))
    assert measures.segment_total_variation(f, a, b, points=100) == pytest.approx(expected, rel=1e-5)
    assert measures.segment_total_variation(opaque(f), a, b, points=7) == pytest.approx(expected, rel=1e-5)


def test_fpl_of_linear_function_is_mean_over_sampled_segments():
    f = affine(W, c=0.0)
    ia, ib = ins.segment_endpoints(len(X), 300, seed=5)
    expected = float(((X[ib] - X[ia]) @ torch.tensor(W)).abs().mean())
    assert measures.function_path_length(f, X, segments=300, points=10, seed=5) == pytest.approx(expected, rel=1e-5)


def test_hat_function_wp_equals_tv_of_derivative():
    # f = relu(x) - 2 relu(x - 1) + relu(x - 2): slopes 0, 1, -1, 0; TV(f') = 1 + 2 + 1 = 4.
    f = two_layer_relu([[1.0], [1.0], [1.0]], [0.0, -1.0, -2.0], [1.0, -2.0, 1.0], 0.0)
    assert measures.weights_product(f) == pytest.approx(4.0)
    tv = measures.segment_total_variation(f, [-1.0], [3.0], points=401, of="gradient")
    assert tv == pytest.approx(4.0, rel=1e-6)
    # FPL along the same segment: f rises by 1 and falls by 1.
    assert measures.segment_total_variation(f, [-1.0], [3.0], points=401) == pytest.approx(2.0, rel=1e-5)


def test_one_dimensional_wp_equals_total_variation_of_derivative_random_net():
    g = torch.Generator().manual_seed(1)
    h = 12
    W1 = torch.randn(h, 1, generator=g, dtype=torch.float64)
    kinks = torch.linspace(-3, 3, h, dtype=torch.float64)      # distinct kink positions -b/w
    b1 = -kinks * W1[:, 0]
    w2 = torch.randn(h, generator=g, dtype=torch.float64)
    f = two_layer_relu(W1, b1, w2, torch.tensor(0.1, dtype=torch.float64))
    tv = measures.segment_total_variation(f, torch.tensor([-5.0], dtype=torch.float64),
                                          torch.tensor([5.0], dtype=torch.float64), points=10001, of="gradient")
    assert tv == pytest.approx(measures.weights_product(f), rel=1e-9)


def test_fpl_lower_bound_matches_brute_force():
    rng = np.random.default_rng(0)
    for y in (rng.normal(size=57), np.array([1.0, -1.0] * 10), rng.integers(0, 3, size=30).astype(float)):
        brute = np.mean([abs(a - b) for a, b in itertools.product(y, y)])
        assert measures.fpl_lower_bound(y) == pytest.approx(brute, rel=1e-12)
        assert measures.fpl_lower_bound(torch.tensor(y)) == pytest.approx(brute, rel=1e-12)
    assert measures.fpl_lower_bound([1.0, -1.0] * 50) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        measures.fpl_lower_bound([])


@pytest.mark.parametrize("widths", [(6, 9, 1), (6, 9, 7, 5, 1), (6, 1)])
def test_closed_form_input_gradient_matches_autograd(widths):
    f = models.mlp(widths, alpha=1.0, seed=2)
    x = torch.randn(30, widths[0], requires_grad=True)
    f(x).sum().backward()
    assert torch.allclose(input_gradient(f.stack(), x.detach())[0], x.grad, atol=1e-6)


def test_closed_form_and_autograd_give_the_same_measures():
    f = models.mlp((5, 16, 1), alpha=1.0, seed=3)
    x = torch.randn(25, 5)
    for fn in (measures.gradient_norm, measures.gradient_norm_squared):
        assert fn(f, x) == pytest.approx(fn(opaque(f), x), rel=1e-5)
    for fn in (measures.function_path_length, measures.gradient_path_length):
        kw = dict(segments=40, points=15, seed=1)
        assert fn(f, x, **kw) == pytest.approx(fn(opaque(f), x, **kw), rel=1e-5)


def test_sequential_relu_net_uses_weights_product():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        expected = float((net[2].weight[0].abs() * net[0].weight.norm(dim=1)).sum())
    assert measures.weights_product(net) == pytest.approx(expected, rel=1e-6)


def test_weights_product_rejects_other_models():
    with pytest.raises(ValueError, match="two-layer"):
        measures.weights_product(models.mlp((4, 5, 5, 1)))
    with pytest.raises(ValueError, match="two-layer"):
        measures.weights_product(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)))


def test_gradient_norm_of_single_relu_unit():
    # f(x) = 2 relu(w.x): gradient 2w where w.x > 0, else 0.
    w = torch.tensor([3.0, 4.0])
    f = two_layer_relu(w[None], [0.0], [2.0], 0.0)
    x = torch.randn(100, 2)
    active = ((x @ w) > 0).float().mean()
    assert measures.gradient_norm(f, x) == pytest.approx(float(active) * 10.0, rel=1e-6)


def test_measure_stack_is_batched_and_matches_single_model_functions():
    p = models.init_mlp([0, 1, 2], (5, 8, 1), alpha=1.0)
    x = torch.randn(3, 30, 5)
    out = registry.measure_stack(p, x, segments=25, points=9, seed=4)
    for m in range(3):
        f = models.ReLUMLP.from_stack(p, m)
        assert out["gradient_norm"][m] == pytest.approx(measures.gradient_norm(f, x[m]), rel=1e-5)
        assert out["function_path_length"][m] == pytest.approx(
            measures.function_path_length(f, x[m], 25, 9, seed=4), rel=1e-5)
        assert out["gradient_path_length"][m] == pytest.approx(
            measures.gradient_path_length(f, x[m], 25, 9, seed=4), rel=1e-5)
        assert out["weights_product"][m] == pytest.approx(measures.weights_product(f), rel=1e-5)


def test_chunking_does_not_change_results(monkeypatch):
    f = models.mlp((5, 8, 1), alpha=1.0, seed=1)
    x = torch.randn(30, 5)
    full = measures.gradient_path_length(f, x, segments=37, points=11, seed=2)
    monkeypatch.setattr(ins, "CHUNK_ELEMENTS", 200)
    assert measures.gradient_path_length(f, x, segments=37, points=11, seed=2) == pytest.approx(full, rel=1e-6)


def test_sampled_measures_are_deterministic_given_seed():
    f = models.mlp((5, 8, 1), alpha=1.0, seed=1)
    x = np.random.default_rng(0).normal(size=(30, 5))  # NumPy input accepted
    a = measures.function_path_length(f, x, segments=20, points=5, seed=7)
    assert a == measures.function_path_length(f, x, segments=20, points=5, seed=7)
    assert a != measures.function_path_length(f, x, segments=20, points=5, seed=8)


def test_bad_inputs_give_clear_errors():
    f = models.mlp((5, 8, 1))
    with pytest.raises(ValueError, match="points"):
        measures.gradient_norm(f, torch.randn(3, 5, 5, 5))
    with pytest.raises(ValueError, match="at least 2"):
        measures.function_path_length(f, torch.randn(4, 5), points=1)
    with pytest.raises(ValueError, match=r"must map \[n, ...\] to \[n\] or \[n, K\]"):
        measures.gradient_norm(lambda x: x[:, None], torch.randn(4, 5))
    with pytest.raises(ValueError, match="output=3 but the module has 2 outputs"):
        measures.gradient_norm(nn.Linear(5, 2), torch.randn(4, 5), output=3)


def test_two_layer_fast_path_equals_the_generic_estimator():
    # 784-256-1 at the paper's alpha, on [0, 1] inputs like MNIST pixels.
    p = models.init_mlp([0, 1], (784, 256, 1), alpha=1.0)
    x = torch.rand(2, 60, 784)
    ev = ins.evaluator(p)
    fast = ins.path_lengths(ev, x, 50, 30, 3, ("fpl", "gpl"))
    generic = ins.Evaluator(ev.values, ev.grads, ev.n_models, ev.dtype, ev.device, stack=None)
    slow = ins.path_lengths(generic, x, 50, 30, 3, ("fpl", "gpl"))
    for k in ("fpl", "gpl"):
        assert torch.allclose(fast[k], slow[k], rtol=1e-4), k


def test_path_norm_is_wp_for_one_hidden_layer_and_the_brute_force_path_sum_for_deeper_nets():
    from smoothness.models import init_mlp
    p1 = init_mlp([0, 1], (5, 7, 1), alpha=1.0, dtype=torch.float64)
    assert torch.allclose(measures.path_norms(p1), measures.weights_products(p1), rtol=1e-12)
    p = init_mlp([2], (3, 4, 3, 2, 1), alpha=1.0, dtype=torch.float64)
    W = [w[0] for w in p.weights]
    brute = 0.0
    for i, j, k in itertools.product(range(4), range(3), range(2)):   # every path through the hidden units
        brute += float(W[0][i].norm() * W[1][j, i].abs() * W[2][k, j].abs() * W[3][0, k].abs())
    assert float(measures.path_norms(p)[0]) == pytest.approx(brute, rel=1e-12)
    assert measures.path_norm(models.ReLUMLP.from_stack(p)) == pytest.approx(brute, rel=1e-12)


def test_path_norm_bounds_the_gradient_norm_and_is_attained_when_all_paths_agree():
    from smoothness.models import init_mlp
    p = init_mlp([3], (6, 8, 5, 1), alpha=1.0, dtype=torch.float64)
    x = torch.randn(1, 2000, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(input_gradient(p, x).norm(dim=-1).max()) <= float(measures.path_norms(p)[0])
    # Rows of W1 parallel to one direction u, all other weights and the biases positive: every unit is
    # active near 0 and every path pushes along u, so ||grad f(0)|| = PN.
    u = torch.tensor([1.0, -2.0, 0.5, 0.0, 1.0, 3.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    W1 = torch.rand(8, 1, generator=g, dtype=torch.float64) * u
    W2, W3 = torch.rand(5, 8, generator=g, dtype=torch.float64), torch.rand(1, 5, generator=g, dtype=torch.float64)
    q = models.MLPStack([W1[None], W2[None], W3[None]],
                        [torch.ones(1, 8, dtype=torch.float64), torch.ones(1, 5, dtype=torch.float64),
                         torch.zeros(1, 1, dtype=torch.float64)])
    grad = input_gradient(q, torch.zeros(1, 1, 6, dtype=torch.float64))
    assert float(grad.norm()) == pytest.approx(float(measures.path_norms(q)[0]), rel=1e-12)
