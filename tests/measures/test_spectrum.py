"""Eigenvalues with error bounds (measures/spectrum.py) and the trace and diagonal estimators (measures/trace.py) on
curvature operators of tiny nets against their dense matrices, and on known matrices over many seeds (the
standard errors' coverage)."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from smoothness.measures import curvature, spectrum
from smoothness.measures import trace as estimators
from smoothness.measures.estimate import Estimate, exact


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 5, generator=g), torch.randint(0, 4, (60,), generator=g)
    h64 = curvature.HessianOperator(copy.deepcopy(model).double(), x.double(), y).dense()
    return model, x, y, h64


def known(n=80, seed=0, decay=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = 10.0 / torch.arange(1, n + 1, dtype=torch.float64) ** decay - shift
    return q @ torch.diag(lam) @ q.T, lam


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_largest_and_smallest_eigenpairs_with_bounds_that_hold(net, dtype):
    model, x, y, h64 = net
    eig = torch.linalg.eigvalsh(h64)
    assert eig[0] < 0                                                   # an indefinite Hessian
    op = curvature.HessianOperator(copy.deepcopy(model).to(dtype), x.to(dtype), y)
    for which, want in (("largest", eig.flip(0)[:3]), ("smallest", eig[:3])):
        got = curvature.eigenpairs(op, 3, which, tol=1e-6, vectors=True, progress=False)
        for e, w in zip(got, want.tolist()):
            assert abs(float(e) - w) <= e.bound, (which, float(e), w, e.bound)
            assert e.bound <= e.residual + 10 * torch.finfo(dtype).eps * float(eig.abs().max()) + 1e-300
            assert e.vector.shape == (op.dim,) and e.vector.dtype == dtype
            assert float(e.vector.double().norm()) == pytest.approx(1.0, abs=1e-6)
            r = (h64 @ e.vector.double() - float(e) * e.vector.double()).norm()
            assert float(r) <= 1e-5 * float(eig.abs().max()) + e.residual
    top = curvature.eigenpairs(op, 1, progress=False)[0]
    assert top.vector is None and top.se == 0 and top.n >= 1


def test_the_quadratic_bound_beats_the_residual_where_the_gap_is_known():
    a, lam = known(60, decay=0.5)
    got = curvature.eigenpairs(curvature.MatrixOperator(a), 2, tol=1e-5, progress=False)
    for e, w in zip(got, lam[:2].tolist()):
        assert e.gap > 0 and e.bound < e.residual and abs(float(e) - w) <= e.bound
    lo, hi = got[0].interval()
    assert lo <= float(lam[0]) <= hi
    assert "Lanczos steps" in str(got[0]) and f"{got[0].residual:.2g}" in str(got[0])
    assert "bound=" in repr(got[0])


def test_a_single_ritz_value_or_a_missing_bound_says_so():
    b, gap = spectrum.bounds(torch.tensor([2.0]), torch.tensor([0.1]), 1e-16)
    assert float(b[0]) == pytest.approx(0.1) and math.isnan(float(gap[0]))
    b, gap = spectrum.bounds(torch.tensor([1.0, 1.05]), torch.tensor([0.1, 0.2]), 0.0)   # overlapping: residuals
    assert b.tolist() == pytest.approx([0.1, 0.2])
    s = curvature.Eigenvalue(3.0, float("nan"), 5)
    assert str(s) == "3 (no error bound)"
    assert repr(exact(0.5)) == "Estimate(0.5, exact)" and repr(Estimate(1.0, 0.1, 3)) == "Estimate(1.0, se=0.1, n=3)"
    with pytest.raises(ValueError, match="which"):
        curvature.eigenpairs(curvature.MatrixOperator(torch.eye(3)), which="middle")


def test_trace_estimators_cover_the_exact_trace_at_a_fixed_seed(net):
    model, x, y, h64 = net
    want = float(h64.trace())
    op = curvature.HessianOperator(model, x, y)
    for est in (curvature.hutchinson(op, 60, seed=1, progress=False), curvature.hutchpp(op, 60, seed=1, progress=False),
                curvature.xtrace(op, 60, seed=1, progress=False)):
        assert est.se > 0 and abs(est - want) <= 3 * est.se, (est, want)
    assert curvature.trace(op, "hutchpp", 60, seed=1, progress=False) == curvature.hutchpp(op, 60, seed=1,
                                                                                         progress=False)
    with pytest.raises(ValueError, match="even"):
        curvature.xtrace(op, 61, progress=False)
    with pytest.raises(ValueError, match="exact trace"):
        curvature.hutchpp(op, op.dim, progress=False)
    with pytest.raises(ValueError, match="unknown trace estimator"):
        curvature.trace(op, "girard")


def test_the_standard_errors_cover_over_many_seeds_and_hutchpp_and_xtrace_reduce_the_spread():
    a, lam = known(80, decay=1.0, shift=0.1)
    op, want = curvature.MatrixOperator(a), float(lam.sum())
    runs = {name: [f(op, 30, seed=s, progress=False) for s in range(200)]
            for name, f in (("hutchinson", estimators.hutchinson), ("hutchpp", estimators.hutchpp),
                            ("xtrace", estimators.xtrace))}
    cover = {k: np.mean([abs(e - want) <= 1.96 * e.se for e in v]) for k, v in runs.items()}
    spread = {k: np.std([float(e) for e in v]) for k, v in runs.items()}
    assert 0.9 <= cover["hutchinson"] <= 0.99 and 0.88 <= cover["hutchpp"] <= 0.99
    assert 0.75 <= cover["xtrace"] <= 0.99           # the authors' error estimate runs low (trace.py)
    assert spread["hutchpp"] < 0.6 * spread["hutchinson"] and spread["xtrace"] < 0.6 * spread["hutchinson"]
    assert all(abs(np.mean([float(e) for e in v]) - want) < 3 * spread[k] / math.sqrt(200) for k, v in runs.items())


def test_the_diagonal_estimated_and_exact(net):
    model, x, y, h64 = net
    op = curvature.HessianOperator(model, x, y)
    ex = curvature.exact_diagonal(op, progress=False)
    torch.testing.assert_close(ex.value, torch.diag(h64), rtol=1e-4, atol=1e-6)
    assert ex.n == 0 and ex.trace.se == 0 and float(ex.trace) == pytest.approx(float(h64.trace()), rel=1e-4)
    d = curvature.diagonal(op, 200, seed=2, progress=False)
    z = ((d.value - torch.diag(h64)) / d.se)[d.se > 0]
    assert d.n == 200 and 0.85 <= float((z.abs() <= 1.96).double().mean()) <= 1.0
    same = curvature.hutchinson(op, 200, seed=2, progress=False)        # the same probes: its trace is Hutchinson's
    assert float(d.trace) == pytest.approx(float(same), rel=1e-6) and d.trace.se == pytest.approx(same.se, rel=1e-6)
    with pytest.raises(ValueError, match="probes >= 2"):
        curvature.diagonal(op, 1)


def test_the_density_of_a_gauss_newton_matrix_lies_on_its_spectrum(net):
    model, x, y, _ = net
    g64 = curvature.GGNOperator(copy.deepcopy(model).double(), x.double(), y)
    eig = torch.linalg.eigvalsh(g64.dense())
    d = curvature.density(g64, runs=8, steps=g64.dim, progress=False)
    assert d.nodes.min() >= -1e-8 and np.allclose(d.weights.sum(1), 1.0)
    tr = d.trace()
    assert abs(tr - float(eig.sum())) <= 4 * tr.se


def test_the_curvature_functions_are_the_estimators_on_the_hessian_operator(net):
    model, x, y, _ = net
    op = curvature.HessianOperator(model, x, y)
    a = curvature.top_eigenvalues(model, x, y, k=2, tol=1e-6)
    b = curvature.eigenpairs(op, 2, tol=1e-6, progress=False)
    assert [float(e) for e in a] == [float(e) for e in b] and [e.bound for e in a] == [e.bound for e in b]
    assert curvature.hessian_trace(model, x, y, probes=20, seed=4) == curvature.hutchinson(op, 20, seed=4,
                                                                                         progress=False)
    da = curvature.eigenvalue_density(model, x, y, runs=2, steps=10, seed=1)
    db = curvature.density(op, runs=2, steps=10, seed=1, progress=False)
    assert np.array_equal(da.nodes, db.nodes) and np.array_equal(da.weights, db.weights)
