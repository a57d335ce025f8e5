"""Curvature of any module and loss (measures/curvature.py, measures/lanczos.py) against the dense Hessian of small
nets (torch.func.hessian): the top eigenvalues, Hutchinson's trace within its standard error, the eigenvalue
density's quadrature; a DataLoader equals the tensor pair; the ReLU-MLP fast path equals the general path."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from smoothness.measures import curvature, lanczos


def dense_hessian(model, x, y, loss) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()]).double()
    m = model.double()

    def f(t):
        params = {n: v.reshape(s) for n, v, s in zip(names, t.split(sizes), shapes)}
        return loss(functional_call(m, params, (x.double(),)), y if not y.is_floating_point() else y.double())
    h = torch.func.hessian(f)(theta)
    model.float()
    return h


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    return model, x, y, torch.linalg.eigvalsh(dense_hessian(model, x, y, F.cross_entropy))


def test_top_eigenvalues_of_a_cross_entropy_classifier_match_the_dense_hessian(classifier):
    model, x, y, eig = classifier
    top = curvature.top_eigenvalues(model, x, y, k=3, tol=1e-6)
    want = eig.flip(0)[:3]
    for got, w in zip(top, want.tolist()):
        assert got == pytest.approx(w, rel=1e-4, abs=1e-6)
        assert abs(got - w) <= got.residual + 1e-5 and got.se == 0.0
    s = curvature.sharpness(model, x, y)
    assert s == pytest.approx(float(eig[-1]), rel=1e-4)


def test_the_default_loss_is_cross_entropy_for_class_labels_and_a_callable_works(classifier):
    model, x, y, eig = classifier
    a = curvature.sharpness(model, x, y, tol=1e-6)
    b = curvature.sharpness(model, x, y, nn.CrossEntropyLoss(), tol=1e-6)
    c = curvature.sharpness(model, x, y, "cross_entropy", tol=1e-6)
    assert float(a) == float(b) == float(c)


def test_hutchinson_trace_holds_the_exact_trace_within_its_error(classifier):
    model, x, y, eig = classifier
    tr = curvature.hessian_trace(model, x, y, probes=400, seed=3)
    assert tr.n == 400 and tr.se > 0
    assert abs(tr - float(eig.sum())) <= 4 * tr.se


def test_the_density_quadrature_is_exact_when_lanczos_spans_the_space(classifier):
    model, x, y, eig = classifier
    dim = eig.numel()
    d = curvature.eigenvalue_density(model, x, y, runs=40, steps=dim + 5)
    tr = d.trace()   # dim x z.Hz/|z|^2 per run: Hutchinson's estimator over the runs' start vectors
    assert tr.n == 40 and abs(tr - float(eig.sum())) <= 4 * tr.se
    assert np.allclose(d.weights.sum(1), 1.0)
    # Gauss quadrature with the full Krylov space: the nodes are the (distinct) eigenvalues
    nodes = np.unique(np.round(d.nodes[0][d.weights[0] > 1e-8], 5))
    assert all(np.min(np.abs(eig.numpy() - v)) < 1e-4 for v in nodes)
    grid, dens, se = d.curve(points=4000)
    assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-3) and se.shape == grid.shape


def test_a_dataloader_gives_the_hessian_of_the_tensor_pair(classifier):
    model, x, y, _ = classifier
    loader = DataLoader(TensorDataset(x, y), batch_size=7)   # a last, partial batch of 5: weighted by its size
    a = curvature.top_eigenvalues(model, x, y, k=2, tol=1e-6)
    b = curvature.top_eigenvalues(model, loader, k=2, tol=1e-6)
    for u, v in zip(a, b):
        assert v == pytest.approx(float(u), rel=1e-5)
    ta = curvature.hessian_trace(model, x, y, probes=20, seed=1)
    tb = curvature.hessian_trace(model, loader, probes=20, seed=1)
    assert tb == pytest.approx(float(ta), rel=1e-5) and tb.se == pytest.approx(ta.se, rel=1e-4)


def test_a_small_cnn_with_cross_entropy():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 6, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    eig = torch.linalg.eigvalsh(dense_hessian(cnn, x, y, F.cross_entropy))
    assert curvature.sharpness(cnn, x, y, tol=1e-6) == pytest.approx(float(eig[-1]), rel=1e-4)


def test_the_relu_mlp_fast_path_agrees_with_the_general_path():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(30, 3, generator=g), torch.randn(30, generator=g)
    exact = torch.linalg.eigvalsh(dense_hessian(net, x, y, lambda o, t: (o[:, 0] - t).square().mean()))
    fast = curvature.sharpness(net, x, y, steps=2000, tol=1e-8)
    general = curvature.sharpness(net, x, y, fast=False, tol=1e-8)
    assert math.isnan(fast.residual) and not math.isnan(general.residual)
    assert fast == pytest.approx(float(exact[-1]), rel=1e-4) and general == pytest.approx(float(exact[-1]), rel=1e-4)
    tf = curvature.hessian_trace(net, x, y, probes=300)
    tg = curvature.hessian_trace(net, x, y, probes=300, fast=False)
    assert abs(tf - float(exact.sum())) <= 4 * tf.se and abs(tg - float(exact.sum())) <= 4 * tg.se


def test_training_mode_batchnorm_and_bad_inputs_get_clear_errors():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    x, y = torch.randn(8, 3), torch.randn(8)
    with pytest.raises(ValueError, match="eval"):
        curvature.sharpness(net, x, y)
    net.eval()
    with pytest.raises(ValueError, match="targets"):
        curvature.sharpness(net, x)
    with pytest.raises(ValueError, match="unknown loss"):
        curvature.sharpness(net, x, y, "hinge")
    with pytest.raises(ValueError, match="must match"):
        curvature.hessian_trace(net, x, y[:5])


def test_lanczos_on_a_known_matrix():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    lam = torch.linspace(-1, 5, 30, dtype=torch.float64)
    a = q @ torch.diag(lam) @ q.T
    alpha, beta, b = lanczos.run(lambda v: a @ v, torch.randn(30, generator=g, dtype=torch.float64), 30)
    values, res, first = lanczos.ritz(alpha, beta, b)
    torch.testing.assert_close(values, lam, atol=1e-9, rtol=0)
    assert float(first.square().sum()) == pytest.approx(1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_measures_of_a_cnn_agree_with_the_cpu():
    from smoothness import measures
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(3 * 4 * 4, 4)).eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
    gpu = copy.deepcopy(cnn).cuda().eval()
    for fn in (lambda f, a, b: curvature.sharpness(f, a, b, tol=1e-6),
               lambda f, a, b: curvature.hessian_trace(f, a, b, probes=10),
               lambda f, a, b: measures.gradient_norm(f, a),
               lambda f, a, b: measures.function_path_length(f, a, segments=20, points=10)):
        assert fn(gpu, x.cuda(), y.cuda()) == pytest.approx(float(fn(cnn, x, y)), rel=1e-3)
    assert measures.lipschitz_bounds(gpu, x.cuda(), output="margin")[1] == pytest.approx(
        float(measures.lipschitz_bounds(cnn, x, output="margin")[1]), rel=1e-6)
