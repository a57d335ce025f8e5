"""Exact measures in one dimension (oned.py) against hand-built functions and the paper's sampled estimators;
the smoothest interpolants' closed forms against the linear program."""
import math

import numpy as np
import pytest
import torch

from smoothness import models
from smoothness.measures import inputspace, oned, registry

U = oned.Density("uniform", -1.0, 1.0)
G = oned.Density("gaussian", 0.2, 0.5)


def net(seed, hidden=16, scale=1.0):
    g = np.random.default_rng(seed)
    return (g.normal(size=hidden) * scale, g.normal(size=hidden), g.normal(size=hidden) * 0.5, g.normal())


def stack(v, w, b, c):
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)   # noqa: E731
    return models.MLPStack([t(w)[None, :, None], t(v)[None, None, :]], [t(b)[None], t([c])[None]])


def test_a_net_and_its_piecewise_linear_form_agree():
    v, w, b, c = net(0)
    w[3] = 0.0                       # a unit with no kink: a constant
    f = oned.PiecewiseLinear.from_net(v, w, b, c)
    t = np.linspace(-4, 4, 2001)
    direct = (v * np.maximum(np.outer(t, w) + b, 0)).sum(1) + c
    np.testing.assert_allclose(f(t), direct, rtol=1e-12, atol=1e-12)
    assert len(f.kinks) == 15 and np.all(np.diff(f.kinks) > 0)
    np.testing.assert_allclose(f.slopes[[0, -1]], [(v * w)[w < 0].sum(), (v * w)[w > 0].sum()], atol=1e-12)


def test_hand_built_functions():
    relu = oned.PiecewiseLinear.from_net([1.0], [1.0], [0.0])
    assert oned.gradient_norm(relu, U) == pytest.approx(0.5)          # P(t > 0)
    assert oned.function_path_length(relu, U) == pytest.approx(1 / 3)  # int_0^1 (1 - t^2) / 2
    assert oned.gradient_path_length(relu, U) == pytest.approx(0.5)   # w(0) = 2 * 1/2 * 1/2
    assert oned.smallest_weights_product_of(relu) == 1.0
    # the hat relu(t + 1/2) - 2 relu(t) + relu(t - 1/2): kinks at -1/2, 0, 1/2 with jumps 1, -2, 1
    hat = oned.PiecewiseLinear.from_net([1.0, -2.0, 1.0], [1.0, 1.0, 1.0], [0.5, 0.0, -0.5])
    assert hat.tv_derivative() == 4.0 and oned.smallest_weights_product_of(hat) == 4.0
    assert oned.gradient_path_length(hat, U) == pytest.approx(3 / 8 + 2 * 0.5 + 3 / 8)
    assert oned.gradient_norm(hat, U) == pytest.approx(0.5)            # |f'| = 1 on [-1/2, 1/2]
    # the identity as relu(t) - relu(-t): WP 2, and no net computing t does better
    ident = oned.PiecewiseLinear.from_net([1.0, -1.0], [1.0, -1.0], [0.0, 0.0])
    np.testing.assert_allclose(ident(np.array([-2.0, 3.0])), [-2.0, 3.0])
    assert ident.tv_derivative() == 0 and oned.smallest_weights_product_of(ident) == 2.0
    assert oned.weights_product([1.0, -1.0], [1.0, -1.0]) == 2.0
    # a Gaussian: GN of the identity is 1, its FPL is E|a - b| = 2 sigma / sqrt(pi)
    assert oned.gradient_norm(ident, G) == pytest.approx(1.0)
    assert oned.function_path_length(ident, G) == pytest.approx(2 * 0.5 / math.sqrt(math.pi), rel=1e-9)


@pytest.mark.parametrize("p", [U, G], ids=["uniform", "gaussian"])
def test_exact_measures_agree_with_the_papers_sampled_estimators(p):
    """The estimators of measures.py on points drawn from p agree with the exact integrals within their sampling
    error (5 standard errors, from the per-point and per-segment values)."""
    v, w, b, c = net(1)
    f = oned.PiecewiseLinear.from_net(v, w, b, c)
    exact = oned.exact_measures(v, w, b, c, p)
    n, segments, points = 4000, 20000, 400
    x = p.sample(n, seed=3)
    est = registry.measure_stack(stack(v, w, b, c), torch.tensor(x)[:, None], segments=segments, points=points,
                                 seed=5)
    # GN: per point |f'(x)|
    d = np.abs(f.slopes[np.searchsorted(f.kinks, x)])
    assert abs(float(est["gradient_norm"][0]) - d.mean()) < 1e-9
    assert abs(d.mean() - exact["gradient_norm"]) < 5 * d.std() / math.sqrt(n)
    # FPL and GPL: per segment, the exact total variation of f and of f' between its end points
    ia, ib = (i.numpy() for i in inputspace.segment_endpoints(n, segments, 5))
    lo, hi = np.minimum(x[ia], x[ib]), np.maximum(x[ia], x[ib])
    grid = np.sort(np.concatenate([f.kinks, [-50.0, 50.0]]))
    slope_mid = np.abs(f.slopes[np.searchsorted(f.kinks, (grid[1:] + grid[:-1]) / 2)])
    cum = np.concatenate([[0.0], np.cumsum(slope_mid * np.diff(grid))])
    tv_f = np.interp(hi, grid, cum) - np.interp(lo, grid, cum)
    inside = (f.kinks[None, :] > lo[:, None]) & (f.kinks[None, :] < hi[:, None])
    tv_g = (inside * np.abs(f.jumps)).sum(1)
    for key, per in (("function_path_length", tv_f), ("gradient_path_length", tv_g)):
        assert float(est[key][0]) == pytest.approx(per.mean(), rel=5e-3)   # 400 samples per segment
        assert abs(per.mean() - exact[key]) < 5 * per.std() / math.sqrt(segments), key
    assert float(est["weights_product"][0]) == pytest.approx(exact["weights_product"], rel=1e-12)


DATA = (np.array([-0.8, -0.3, 0.1, 0.5, 0.9]), np.array([1.0, -1.0, 1.0, 1.0, -1.0]))


@pytest.mark.parametrize("p", [U, G], ids=["uniform", "gaussian"])
def test_the_linear_program_meets_the_closed_forms(p):
    x, y = DATA
    g = oned.grid_for(x, p, cells=4000)
    h = np.diff(g).max()
    for measure, closed, lip in (("gradient_norm", oned.smallest_gradient_norm(x, y, p), p.pdf(0.2) / 0.5 ** 2),
                                 ("function_path_length", oned.smallest_function_path_length(x, y, p),
                                  2 * float(p.pdf(p.a if p.kind == "gaussian" else 0.0)))):
        value, f = oned.smallest_on_grid(measure, x, y, p, g)
        np.testing.assert_allclose(f(x), y, atol=1e-9)
        # an upper bound of the infimum, above it by at most h * sup|weight'| * sum |dy| (docs/oned.md)
        assert closed - 1e-9 <= value <= closed + h * lip * np.abs(np.diff(y)).sum() + 1e-9, measure
    value, f = oned.smallest_on_grid("weights_product", x, y, p, g)
    assert value == pytest.approx(oned.smallest_weights_product(x, y), abs=1e-7)
    assert oned.smallest_weights_product_of(f) == pytest.approx(value, abs=1e-7)
    np.testing.assert_allclose(f(x), y, atol=1e-9)
    value, f = oned.smallest_on_grid("gradient_path_length", x, y, p, g)
    spline = oned.linear_spline(x, y)
    assert value <= oned.gradient_path_length(spline, p) + 1e-9     # the spline is one interpolant
    assert oned.gradient_path_length(f, p) == pytest.approx(value, abs=1e-7)


def test_the_smallest_weights_product_closed_form():
    # (0, 0), (1, 1): the spline (the identity) costs 2; relu(t) interpolates at cost 1
    x, y = np.array([0.0, 1.0]), np.array([0.0, 1.0])
    assert oned.smallest_weights_product(x, y) == 1.0
    # a zigzag: TV dominates the end term
    x, y = DATA
    s = np.diff(y) / np.diff(x)
    assert oned.smallest_weights_product(x, y) == pytest.approx(np.abs(np.diff(s)).sum())
    assert oned.smallest_tv_derivative(x, y) == pytest.approx(np.abs(np.diff(s)).sum())


def test_the_infima_of_gn_and_fpl_are_approached_by_steeper_ramps():
    x, y = np.array([-0.5, 0.5]), np.array([0.0, 1.0])
    inf_gn = oned.smallest_gradient_norm(x, y, G)
    vals = []
    for eps in (0.2, 0.05, 0.01):   # a ramp of width eps at the end where the Gaussian density is smaller
        ramp = oned.PiecewiseLinear(0.0, 0.0, np.array([-0.5, -0.5 + eps]), np.array([1 / eps, -1 / eps]))
        np.testing.assert_allclose(ramp(x), y, atol=1e-12)
        vals.append(oned.gradient_norm(ramp, G))
    assert vals[0] > vals[1] > vals[2] > inf_gn and vals[2] - inf_gn < 0.01


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="distinct"):
        oned.smallest_tv_derivative([0.0, 0.0, 1.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="unknown density"):
        oned.Density("cauchy")
    with pytest.raises(ValueError, match="unknown measure"):
        oned.smallest_on_grid("sharpness", *DATA, U)


def test_the_linear_spline_is_gpl_optimal_where_w_is_concave():
    """Uniform density: w is concave, so the spline's GPL is the infimum (LP duality, docs/oned.md); the grid LP,
    which may put kinks anywhere on 4,000 cells, finds nothing smaller, and the dual LP comes up to it."""
    g = np.random.default_rng(3)
    for n in (3, 5, 17, 40):
        x = U.sample(n, seed=n)
        y = np.sin(4 * x) + g.normal(0, 0.3, n)
        lower, upper = oned.smallest_gradient_path_length(x, y, U)
        spline = oned.gradient_path_length(oned.linear_spline(x, y), U)
        assert lower == upper == pytest.approx(spline, rel=1e-12)
        assert oned.smallest_on_grid("gradient_path_length", x, y, U)[0] == pytest.approx(spline, rel=1e-7)
        assert spline * (1 - 1e-2) <= oned.gradient_path_length_lower(x, y, U) <= spline * (1 + 1e-9)


def test_gpl_bracket_on_a_gaussian_density_holds_the_lp_optimum_and_narrows_with_the_grid():
    """Gaussian: w is convex in the tails, so the spline is not optimal. Three points 1, 2 and 3 sd out, values
    0, 0, 1: the spline's kink at 1.0 costs 2 w(1.0) ~ 0.089, while a kink at t in (1, 1.5) with slope 1 / (1.5 - t)
    after it costs w(t) / (1.5 - t), ~ 0.046 near t = 1.3. The bracket [dual LP, grid LP] holds every interpolant's
    GPL."""
    p = oned.Density("gaussian", 0.0, 0.5)
    assert not oned.concave_between(p, -1.0, 1.0) and oned.concave_between(p, -0.4, 0.4)
    assert oned._Z_CONCAVE == pytest.approx(0.877, abs=1e-3)
    x, y = np.array([0.5, 1.0, 1.5]), np.array([0.0, 0.0, 1.0])
    lower, upper = oned.smallest_gradient_path_length(x, y, p)
    assert oned.spline_gradient_path_length(x, y, p) == pytest.approx(2 * p.between(1.0))
    t = np.linspace(1.0, 1.499, 5000)
    assert upper <= (p.between(t) / (1.5 - t)).min() + 1e-9 < 0.6 * oned.spline_gradient_path_length(x, y, p)
    assert 0 < lower <= upper <= lower * 1.01
    widths = []
    for cells in (1000, 8000):
        grid = oned.grid_for(x, p, cells=cells)
        lo = oned.gradient_path_length_lower(x, y, p, grid)
        up, f = oned.smallest_on_grid("gradient_path_length", x, y, p, grid)
        assert oned.gradient_path_length(f, p) >= lo - 1e-9     # the lower bound holds for this interpolant
        widths.append(up - lo)
    assert widths[1] < widths[0] / 4
    g = np.random.default_rng(0)
    xs = p.sample(30, seed=1)
    ys = np.sign(xs) + g.normal(0, 0.2, 30)
    lo, up = oned.smallest_gradient_path_length(xs, ys, p)
    assert lo <= up <= lo * 1.01
    for _ in range(20):     # random interpolants: the spline plus hat bumps that vanish at every data point
        f = oned.linear_spline(xs, ys, left=g.normal(), right=g.normal())
        assert oned.gradient_path_length(f, p) >= lo - 1e-9
