"""Curvature operators (measures/operators.py, gaussnewton.py) against dense matrices computed independently on tiny
nets: the Hessian by torch.func.hessian, the GGN from the output Jacobian and the loss's output Hessian, the Fisher
from its definition (an expectation over the model's own predictive distribution, enumerated), the empirical
Fisher from per-point gradients; parameter blocks; the scipy LinearOperator; DataLoaders."""
import copy

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import eigsh
from torch import nn
from torch.func import functional_call, jacrev
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from smoothness.measures import curvature, operators


def flat_fn(model):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    m = copy.deepcopy(model).double()
    return theta, lambda t, x: functional_call(m, {n: v.reshape(s) for n, v, s in zip(names, t.split(sizes), shapes)},
                                               (x.double(),))


def dense_matrices(model, x, y, kind):
    """{'hessian', 'ggn', 'fisher', 'empirical_fisher'} [P, P] float64 of the mean loss: cross-entropy for kind
    'ce', eq. 2 (mean of ||f - y||^2) for kind 'mse'."""
    theta, f = flat_fn(model)
    n = x.shape[0]
    if kind == "ce":
        loss = lambda o, t: F.cross_entropy(o, t)
    else:
        loss = lambda o, t: (o - t.double()).square().reshape(o.shape[0], -1).sum(1).mean()
    h = torch.func.hessian(lambda t: loss(f(t, x), y))(theta)
    jac = jacrev(lambda t: f(t, x))(theta)                               # [n, K, P]
    out = f(theta, x).detach()
    if kind == "ce":
        p = out.softmax(1)
        m = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        # the Fisher by definition: E_{c ~ p} [g_c g_c^T] with g_c = J^T (p - e_c), enumerated over the classes
        fisher = sum((p[:, c, None, None] * torch.einsum("nkp,nk,nl,nlq->npq", jac, p - F.one_hot(
            torch.full((n,), c), p.shape[1]), p - F.one_hot(torch.full((n,), c), p.shape[1]), jac)).sum(0)
            for c in range(p.shape[1])) / n
        gs = torch.einsum("nkp,nk->np", jac, p - F.one_hot(y, p.shape[1]))
    else:
        m = 2 * torch.eye(out.shape[1], dtype=torch.float64).expand(n, -1, -1)
        fisher = 2 * torch.einsum("nkp,nkq->pq", jac, jac) / n          # E[g g^T], g = J^T 2 (f - y), y ~ N(f, I/2)
        gs = torch.einsum("nkp,nk->np", jac, 2 * (out - y.double()))
    ggn = torch.einsum("nkp,nkl,nlq->pq", jac, m, jac) / n
    return {"hessian": h, "ggn": ggn, "fisher": fisher, "empirical_fisher": gs.T @ gs / n}


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    return model, x, y, dense_matrices(model, x, y, "ce")


@pytest.fixture(scope="module")
def regressor():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(30, 3, generator=g), torch.randn(30, 2, generator=g)
    return model, x, y, dense_matrices(model, x, y, "mse")


@pytest.mark.parametrize("kind", ["hessian", "ggn", "fisher", "empirical_fisher"])
def test_every_operator_is_its_dense_matrix(classifier, regressor, kind):
    for model, x, y, want in (classifier, regressor):
        op = curvature.operator(kind, copy.deepcopy(model).double(), x.double(), y)
        torch.testing.assert_close(op.dense(), want[kind], rtol=1e-9, atol=1e-12)
        op32 = curvature.operator(kind, model, x, y)      # float32 by default, products in float32
        v = torch.randn(op32.dim, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(op32.matvec(v).double(), want[kind] @ v.double(), rtol=1e-4, atol=1e-5)
        assert op32.matvec(v).dtype == torch.float32 and op32.shape == (op32.dim, op32.dim)


def test_the_exact_fisher_equals_the_ggn_for_these_losses_and_a_loss_without_a_likelihood_is_refused(classifier):
    model, x, y, want = classifier
    torch.testing.assert_close(want["fisher"], want["ggn"], rtol=1e-10, atol=1e-12)
    a = curvature.FisherOperator(model, x, y, nn.CrossEntropyLoss()).dense()
    b = curvature.FisherOperator(model, x, y, "cross_entropy").dense()
    torch.testing.assert_close(a, b)
    reg = nn.Linear(3, 2)
    xr, yr = torch.randn(10, 3), torch.randn(10, 2)
    # nn.MSELoss also averages over the 2 outputs: its Fisher (and GGN) is half that of eq. 2
    torch.testing.assert_close(curvature.FisherOperator(reg, xr, yr, nn.MSELoss()).dense(),
                               curvature.FisherOperator(reg, xr, yr, "mse").dense() / 2)
    torch.testing.assert_close(curvature.FisherOperator(reg, xr, yr, nn.MSELoss()).dense(),
                               curvature.GGNOperator(reg, xr, yr, nn.MSELoss()).dense(), rtol=1e-5, atol=1e-7)
    huber = lambda o, t: F.huber_loss(o, t)
    with pytest.raises(ValueError, match="negative log-likelihood"):
        curvature.FisherOperator(reg, xr, yr, huber).matvec(torch.ones(8))
    assert curvature.GGNOperator(reg, xr, yr, huber).dense().shape == (8, 8)   # the GGN takes any loss


def test_nn_mseloss_whose_gradient_forward_mode_ad_cannot_differentiate_takes_reverse_mode():
    torch.manual_seed(0)
    reg = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(10, 3), torch.randn(10, 2)
    for kind in ("hessian", "ggn"):
        op = curvature.operator(kind, reg, x, y, nn.MSELoss())   # the mean over the 2 outputs too: half of eq. 2
        torch.testing.assert_close(op.dense(), curvature.operator(kind, reg, x, y, "mse").dense() / 2)
        assert not op.forward_ad and curvature.operator(kind, reg, x, y, "mse").forward_ad
    assert curvature.sharpness(reg, x, y, nn.MSELoss(), tol=1e-6) == pytest.approx(
        float(curvature.sharpness(reg, x, y, "mse", fast=False, tol=1e-6)) / 2, rel=1e-5)


def test_the_sampled_fisher_is_fixed_per_seed_and_averages_to_the_fisher(classifier, regressor):
    for model, x, y, want in (classifier, regressor):
        m = copy.deepcopy(model).double()
        a = curvature.SampledFisherOperator(m, x.double(), y, mc_samples=2, seed=3)
        torch.testing.assert_close(a.dense(), a.dense())                 # one matrix, whatever the product
        assert not torch.allclose(a.dense(), curvature.SampledFisherOperator(m, x.double(), y, mc_samples=2,
                                                                            seed=4).dense())
        many = curvature.SampledFisherOperator(m, x.double(), y, mc_samples=4000, seed=1).dense()
        err = (many - want["fisher"]).norm() / want["fisher"].norm()
        assert err < 0.05                                                 # ~1/sqrt(4000) relative
        assert bool(torch.linalg.eigvalsh(a.dense()).min() > -1e-10)      # a sum of outer products
    with pytest.raises(ValueError, match="mc_samples"):
        curvature.SampledFisherOperator(model, x, y, mc_samples=0)


def test_a_dataloader_and_matmat_give_the_same_products(classifier):
    model, x, y, _ = classifier
    loader = DataLoader(TensorDataset(x, y), batch_size=7)               # a partial last batch, weighted by size
    V = torch.randn(51, 20, generator=torch.Generator().manual_seed(0))
    for kind in ("hessian", "ggn", "fisher", "empirical_fisher", "sampled_fisher"):
        op = curvature.operator(kind, model, x, y, batch_size=7, chunk=6)
        by_loader = curvature.operator(kind, model, loader)
        cols = torch.stack([op.matvec(V[:, i]) for i in range(V.shape[1])], 1)
        torch.testing.assert_close(op.matmat(V), cols, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(by_loader @ V, cols, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="unknown curvature"):
        curvature.operator("kfac", model, x, y)
    with pytest.raises(ValueError, match="matmat takes"):
        curvature.operator("ggn", model, x, y).matmat(torch.ones(5, 2))


def test_a_loaders_small_batches_are_read_together_and_a_loss_of_ones_own_sees_them_as_they_come(classifier):
    model, x, y, _ = classifier
    calls = []
    hook = model[0].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        loader = DataLoader(TensorDataset(x, y), batch_size=4)   # 10 batches of 4 points
        v = torch.randn(51, generator=torch.Generator().manual_seed(0))
        want = curvature.operator("hessian", model, x, y).matvec(v)
        for kind, size in (("hessian", 40), ("ggn", 40), ("sampled_fisher", 4)):
            op = curvature.operator(kind, model, loader)
            op.check()
            calls.clear()
            got = op.matvec(v)
            assert set(calls) == {size}, kind                    # the points of each forward pass
            if kind == "hessian":
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
        calls.clear()
        curvature.operator("hessian", model, loader, batch_size=12).matvec(v)
        assert calls[-4:] == [12, 12, 12, 4]                     # at most batch_size points read together
        calls.clear()
        curvature.operator("hessian", model, loader, loss=lambda o, t: F.cross_entropy(o, t)).matvec(v)
        assert calls[-10:] == [4] * 10                           # a loss of one's own: the loader's batches
    finally:
        hook.remove()


def test_measures_over_a_dataloader_are_those_over_the_tensor():
    from smoothness import measures
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(3 * 3 * 3, 4)).eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 1, 6, 6, generator=g), torch.randint(0, 4, (300,), generator=g)
    s = measures.Settings(segments=20, points=8, probes=6, steps=12, runs=2)
    which = ("gradient_norm", "gradient_norm_squared", "path_lengths", "lipschitz", "loss", "sharpness",
             "hessian_trace", "density")
    a = measures.measure_model(cnn, x, y, which, s)
    for batch in (7, 64):   # batches read together (and, over 256 points, the input-space ones in two reads)
        b = measures.measure_model(cnn, DataLoader(TensorDataset(x, y), batch_size=batch), None, which, s)
        assert a.values.keys() == b.values.keys()
        for k, v in a.values.items():
            assert float(b.values[k]) == pytest.approx(float(v), rel=1e-4), (batch, k)
            assert b.values[k].se == pytest.approx(v.se, rel=1e-3, abs=1e-9) and b.values[k].n == v.n, (batch, k)
        np.testing.assert_allclose(b.density.nodes, a.density.nodes, rtol=1e-4, atol=1e-5)


def test_a_block_is_the_submatrix_of_its_parameters(classifier):
    model, x, y, want = classifier
    m = copy.deepcopy(model).double()
    full = curvature.HessianOperator(m, x.double(), y)
    assert full.layers() == ["0", "2"] and full.dim == 51
    first = full.restrict("0")                                           # 4 x 6 weights + 6 biases
    assert first.names == ["0.weight", "0.bias"] and first.dim == 30
    torch.testing.assert_close(first.dense(), want["hessian"][:30, :30])
    bias = curvature.GGNOperator(m, x.double(), y, params=["2.bias", "0.bias"])
    idx = torch.cat([torch.arange(24, 30), torch.arange(48, 51)])
    torch.testing.assert_close(bias.dense(), want["ggn"][idx][:, idx])
    with pytest.raises(ValueError, match="no trainable parameter is named 'conv'.*0, 2"):
        full.restrict("conv")


def test_scipy_linear_operator_with_eigsh(classifier):
    model, x, y, want = classifier
    lo = curvature.operator("hessian", copy.deepcopy(model).double(), x.double(), y).to_scipy()
    assert lo.shape == (51, 51) and lo.dtype == np.float64
    v = np.random.default_rng(0).standard_normal((51, 3))
    out = lo.matmat(v)
    assert out.dtype == np.float64 and out.shape == (51, 3)
    np.testing.assert_allclose(out, want["hessian"].numpy() @ v, rtol=1e-9, atol=1e-12)
    exact = np.linalg.eigvalsh(want["hessian"].numpy())
    np.testing.assert_allclose(np.sort(eigsh(lo, k=3, which="LA")[0]), exact[-3:], rtol=1e-7)
    np.testing.assert_allclose(np.sort(eigsh(lo, k=2, which="SA")[0]), exact[:2], rtol=1e-7)
    f32 = curvature.operator("ggn", model, x, y).to_scipy(np.float32)
    assert f32.matvec(np.ones(51)).dtype == np.float32


def test_dense_forms_refuse_absurd_sizes_before_any_work(classifier, monkeypatch):
    model, x, y, _ = classifier
    monkeypatch.setattr(operators, "DENSE_MAX_DIM", 50)
    op = curvature.operator("hessian", model, x, y)
    calls = []
    op.matmat = lambda V: calls.append(1)
    with pytest.raises(ValueError, match="51 parameters"):
        op.dense()
    with pytest.raises(ValueError, match="51 parameters"):
        curvature.exact_diagonal(op)
    assert not calls


def test_mse_on_integer_labels_of_k_outputs_is_the_mse_against_one_hot_targets_as_a_grid_trains(classifier):
    """A grid's `loss: mse` of classes trains on sum_k (f_k - [k = y])^2; measured with loss='mse' and the same
    integer labels, the curvature is that loss's, equal to the dense Hessian against the one-hot float targets."""
    from smoothness.errors import MeasureError
    model, x, y, _ = classifier
    m64 = copy.deepcopy(model).double()
    onehot = F.one_hot(y, 3).double()
    want = dense_matrices(model, x, onehot, "mse")["hessian"]
    torch.testing.assert_close(curvature.operator("hessian", m64, x.double(), y, "mse").dense(), want,
                               rtol=1e-9, atol=1e-12)
    with pytest.raises(MeasureError, match="labels from 0 to 3, but the model has 3 outputs"):
        curvature.operator("hessian", m64, x.double(), torch.where(y == 2, 3, y), "mse").dense()
    with pytest.raises(MeasureError, match=r"give y \[n, 3\], or integer class labels \[n\]"):
        curvature.operator("hessian", m64, x.double(), torch.randn(40, 2, dtype=torch.float64), "mse").dense()


def test_the_mse_given_as_a_callable_never_broadcasts_targets_that_do_not_fit():
    from smoothness.errors import MeasureError
    model = nn.Linear(4, 3)
    x, y = torch.randn(10, 4), torch.randn(10)
    with pytest.raises(MeasureError, match="compares each point's 3 output"):
        curvature.LOSSES["mse"](model(x), y)
    torch.testing.assert_close(curvature.LOSSES["mse"](model(x), torch.zeros(10, 3)), model(x).square().sum(1).mean())
