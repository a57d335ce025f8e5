"""Bounds on the Lipschitz constant sup ||grad f||: nets whose constant is known by construction."""
import math

import pytest
import torch

from smoothness import measures, models
from smoothness.measures import lipschitz
from smoothness.models import input_gradient


def bump():
    """f(t) = 3 relu(t - 0.1) - 3 relu(t - 0.2) + 0.5 relu(t) - 0.5 relu(-t): slope 3.5 on (0.1, 0.2), 0.5
    elsewhere, so L = 3.5; no data point lies in (0.1, 0.2)."""
    W1, b1 = torch.tensor([[1.0], [1.0], [1.0], [-1.0]]), torch.tensor([-0.1, -0.2, 0.0, 0.0])
    w2, b2 = torch.tensor([[3.0, -3.0, 0.5, -0.5]]), torch.zeros(1)
    return models.ReLUMLP([W1, w2], [b1, b2]), torch.tensor([[-1.0], [-0.5], [0.0], [0.3], [0.7], [1.0]])


def test_the_ascent_finds_a_steep_region_between_the_points():
    f, x = bump()
    p = f.stack()
    assert float(lipschitz.lower_bounds(p, x[None], steps=0)[0]) == pytest.approx(0.5)   # the points alone
    lower, upper = measures.lipschitz_bounds(f, x)
    assert lower == pytest.approx(3.5, rel=1e-6)
    assert upper == pytest.approx(2.0 * math.sqrt(18.5), rel=1e-6)    # ||W1||_2 = 2, ||w2|| = sqrt(18.5)


def test_the_bounds_meet_where_every_unit_is_active_and_the_layers_are_orthogonal():
    """f(x) = v . relu(Q x + c) with Q orthogonal and c large: every unit is active on the data's box, so
    grad f = Q^T v everywhere and L = ||v|| = ||Q||_2 ||v||_2."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    v = torch.randn(1, 6, generator=g)
    f = models.ReLUMLP([q, v], [torch.full((6,), 10.0), torch.zeros(1)])
    x = torch.rand(40, 6, generator=g) * 2 - 1
    lower, upper = measures.lipschitz_bounds(f, x)
    assert lower == pytest.approx(float(v.norm()), rel=1e-5) and upper == pytest.approx(float(v.norm()), rel=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_lower_never_exceeds_upper_and_stays_in_the_box(seed):
    g = torch.Generator().manual_seed(seed)
    p = models.init_mlp([seed, seed + 10], (2, 16, 16, 1), alpha=1.0)
    for b in p.biases[:-1]:
        b.copy_(torch.randn(b.shape, generator=g) * 0.5)
    x = torch.rand(50, 2, generator=g) * 2 - 1
    low = lipschitz.lower_bounds(p, x.expand(2, -1, -1))
    at_points = input_gradient(p, x.expand(2, -1, -1)).norm(dim=-1).max(1).values
    assert (low >= at_points).all() and (low <= lipschitz.spectral_products(p)).all()
    assert (low <= measures.path_norms(p) * (1 + 1e-6)).all()
    # every value is the gradient norm at a point of the box: a dense grid of the box reaches it, up to regions
    # smaller than the grid's cells
    t = torch.linspace(-1, 1, 400)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    lo, hi = x.min(0).values, x.max(0).values
    grid = grid[((grid >= lo) & (grid <= hi)).all(1)]
    dense = input_gradient(p, grid.expand(2, -1, -1)).norm(dim=-1).max(1).values
    assert (low <= dense * 1.05).all()


def test_any_module_gets_the_largest_gradient_at_the_points_and_the_product_upper_bound():
    f = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(1))
    lower, upper = measures.lipschitz_bounds(f, x)
    xi = x.clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(f(xi).sum(), xi)
    assert lower == pytest.approx(float(gr.norm(dim=1).max()), rel=1e-6)
    assert lower <= upper and upper.se == 0.0   # tanh is 1-Lipschitz: the product of the layers' norms
