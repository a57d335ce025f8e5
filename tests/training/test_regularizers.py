import pytest
import torch

from smoothness import measures, models, training
from smoothness.data import images
from smoothness.models import MLPStack, init_mlp
from smoothness.runtime import rng
from smoothness.training import regularizers

KINDS = [k for k in regularizers.REGULARIZERS if k != "none"]


def tiny_batch(B=8):
    g = torch.Generator().manual_seed(0)
    xb = torch.rand(2, B, 3, generator=g, dtype=torch.float64)
    yb = torch.randn(2, B, generator=g, dtype=torch.float64)
    valid = torch.ones(2, B, dtype=torch.bool)
    valid[1, 5:] = False   # model 1 is at a partial batch of 5 points
    return xb, yb, valid


@pytest.mark.parametrize("kind", KINDS)
def test_regularized_loss_gradient_matches_finite_differences(kind):
    p = init_mlp([3, 4], (3, 6, 1), alpha=1.0, dtype=torch.float64)
    with torch.no_grad():
        for b in p.biases:
            b.uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(1))
    xb, yb, valid = tiny_batch()
    lam = torch.tensor([0.3, 0.7], dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in p.tensors()]
    q = MLPStack(leaves[:2], leaves[2:])
    obj, _ = regularizers.regularized_loss(q, kind, lam, xb, yb, valid)
    grads = torch.autograd.grad(obj.sum(), leaves)
    eps = 1e-6
    g = torch.Generator().manual_seed(2)
    for t_i, (t, gr) in enumerate(zip(p.tensors(), grads)):
        for _ in range(6):
            flat = torch.randint(0, t.numel(), (1,), generator=g).item()
            plus, minus = p.clone(), p.clone()
            plus.tensors()[t_i].view(-1)[flat] += eps
            minus.tensors()[t_i].view(-1)[flat] -= eps
            fp = regularizers.regularized_loss(plus, kind, lam, xb, yb, valid)[0].sum()
            fm = regularizers.regularized_loss(minus, kind, lam, xb, yb, valid)[0].sum()
            assert float(gr.reshape(-1)[flat]) == pytest.approx(float(fp - fm) / (2 * eps), rel=1e-5, abs=1e-8)


def test_batch_variants_match_their_definitions():
    p = init_mlp([5], (3, 6, 1), alpha=1.0, dtype=torch.float64)
    xb, _, valid = tiny_batch()
    f = models.ReLUMLP.from_stack(p.select([0, 0]), 0)
    # GN on the batch: the mean gradient norm over the valid points.
    gn = regularizers.batch_measure(p.select([0, 0]), "gradient_norm", xb, valid)
    assert float(gn[0]) == pytest.approx(measures.gradient_norm(f, xb[0]), rel=1e-10)
    assert float(gn[1]) == pytest.approx(measures.gradient_norm(f, xb[1, :5]), rel=1e-10)
    # FPL on the batch: sum over pairs (i, i + c//2) of the TV on 10 points.
    fpl = regularizers.batch_measure(p.select([0, 0]), "function_path_length", xb, valid)
    for m, c in ((0, 8), (1, 5)):
        expected = sum(measures.segment_total_variation(f, xb[m, i], xb[m, i + c // 2], points=10)
                       for i in range(c // 2))
        assert float(fpl[m]) == pytest.approx(expected, rel=1e-10)
    wp = regularizers.batch_measure(p, "weights_product", xb, valid)
    assert float(wp[0]) == pytest.approx(measures.weights_product(models.ReLUMLP.from_stack(p)), rel=1e-10)


def test_default_learning_rates_follow_the_paper():
    assert regularizers.default_lr("gradient_path_length") == 0.1
    assert regularizers.default_lr("function_path_length") == 0.1
    assert regularizers.default_lr("gradient_norm") == 0.01
    with pytest.raises(ValueError, match="unknown regularizer"):
        training.TrainSpec([0], [1.0], regularizer="curvature")


def test_larger_lambda_gives_a_smoother_model():
    # Weights-product regularization on a small task: both models reach the loss threshold and the
    # regularized one has a clearly smaller WP (measured here: 1.91 -> 1.78, seeded and deterministic).
    task = images.binary_task("mnist5k", 3, 8)
    rows = task.subset(64, 0)
    specs = [training.TrainSpec(rows, task.pool_y[rows], seed=0, regularizer="weights_product", lam=lam, lr=0.05,
                                max_epochs=3000) for lam in (0.0, 1e-3)]
    res = training.train_models(task.pool_x, specs)
    assert [r.status for r in res] == ["converged", "converged"]
    wp = [measures.weights_product(models.ReLUMLP.from_stack(r.params)) for r in res]
    assert wp[1] < 0.95 * wp[0]


def test_one_batch_trains_one_regularizer_kind():
    with pytest.raises(ValueError, match="one kind"):
        training.train_models(torch.rand(4, 784), [training.TrainSpec([0], [1.0], regularizer="gradient_norm"),
                                                   training.TrainSpec([1], [1.0])])
    with pytest.raises(ValueError, match=r"one batched program has one loss, got \['cross_entropy', 'mse'\]"):
        training.train_models(torch.rand(4, 784), [training.TrainSpec([0], [1.0], loss="cross_entropy"),
                                                   training.TrainSpec([1], [1.0])], widths=(784, 4, 2))


def test_minibatch_gradient_norm_is_the_squared_norm_of_the_hand_derived_parameter_gradient():
    p = init_mlp([3, 4], (3, 6, 1), alpha=1.0, dtype=torch.float64)
    with torch.no_grad():
        for b in p.biases:
            b.uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(1))
    xb, yb, valid = tiny_batch()
    leaves = [t.clone().requires_grad_(True) for t in p.tensors()]
    q = MLPStack(leaves[:2], leaves[2:])
    lam = torch.tensor([1.0, 1.0], dtype=torch.float64)
    obj, err = regularizers.regularized_loss(q, "minibatch_gradient_norm", lam, xb, yb, valid)
    mse = err.square().sum(1) / valid.sum(1)
    s = (obj - mse).detach()
    for m, c in ((0, 8), (1, 5)):
        W1, b1, w2, b2 = p.weights[0][m], p.biases[0][m], p.weights[1][m, 0], p.biases[1][m, 0]
        x, y = xb[m, :c], yb[m, :c]
        z = x @ W1.T + b1
        h = z.clamp(min=0)
        e = h @ w2 + b2 - y                               # residuals
        d = 2 * e / c                                      # dL/df per point
        back = d[:, None] * w2[None, :] * (z > 0)         # dL/dz per point
        sq = ((d[:, None] * h).sum(0).square().sum() + d.sum().square()
              + (back.T @ x).square().sum() + back.sum(0).square().sum())
        assert float(s[m]) == pytest.approx(float(sq), rel=1e-10)


def test_minibatch_gradient_norm_regularizer_reaches_the_threshold_with_smaller_gradient_norms():
    # Smith et al.'s term made explicit: at the same training loss (the 1e-3 threshold) the regularized
    # model has a much smaller full-batch gradient norm (N = batch = 64) than plain SGD's.
    from smoothness.measures import paramspace
    task = images.binary_task("mnist5k", 0, 1)
    rows = task.subset(64, 0)
    specs = [training.TrainSpec(rows, task.pool_y[rows], seed=0, regularizer="minibatch_gradient_norm", lam=lam,
                                lr=0.05, max_epochs=2000, threshold=1e-3) for lam in (0.0, 0.01)]
    plain, reg = training.train_models(task.pool_x, specs, widths=(784, 64, 1))
    assert plain.status == reg.status == training.CONVERGED
    x, y = task.pool_x[rows], task.pool_y[rows]
    mgn = [float(paramspace.minibatch_gradient_norm(r.params, x, y)[0]) for r in (plain, reg)]
    assert mgn[1] < 0.3 * mgn[0]


@pytest.mark.parametrize("kind", regularizers.TWO_LAYER)
@pytest.mark.parametrize("points", [2, 10, 23])
def test_two_layer_closed_form_gives_the_autograd_gradient(kind, points):
    # The closed form (pre-activations along segments, GPL by its Gram matrix and a hand-written backward) against
    # autograd through the generic objective, which evaluates f and grad f at the segment points themselves.
    p = init_mlp([3, 4], (3, 6, 1), alpha=1.0, dtype=torch.float64)
    with torch.no_grad():
        for b in p.biases:
            b.uniform_(-0.3, 0.3, generator=torch.Generator().manual_seed(1))
    xb, yb, valid = tiny_batch()
    lam = torch.tensor([0.3, 0.7], dtype=torch.float64)
    q = p.as_leaves()
    obj, err = regularizers.regularized_loss(q, kind, lam, xb, yb, valid, points)
    expected = torch.autograd.grad(obj.sum(), q.tensors())
    got, err2 = regularizers.regularized_grads(p, kind, lam, xb, yb, valid, points)
    assert torch.equal(err.detach(), err2)
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), float((a - b).abs().max())
    assert any(float(g.abs().max()) > 0 for g in got)


def gpl_case(m=3, B=20, h=40, d=30, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    W1 = torch.randn(m, h, d, generator=g, dtype=dtype) / d ** 0.5
    w2 = torch.randn(m, 1, h, generator=g, dtype=dtype)
    w2[0, 0, :3] = 0.0                                   # units with no weight out still change sign
    z = torch.bmm(torch.rand(m, B, d, generator=g, dtype=dtype), W1.transpose(1, 2)) \
        + 0.3 * torch.randn(m, 1, h, generator=g, dtype=dtype)
    z[1, 0, :5] = 0.0                                    # pre-activations exactly at the kink
    valid = torch.ones(m, B, dtype=torch.bool)
    valid[1, 13:] = False                                # a partial batch (6 segments)
    valid[2, 3:] = False                                 # 1 segment
    p = MLPStack([W1, w2], [torch.zeros(m, h, dtype=dtype), torch.zeros(m, 1, dtype=dtype)])
    return p, z, valid, torch.tensor([0.3, 1.0, 2e-3], dtype=dtype)[:m]


@pytest.mark.parametrize("points", [2, 3, 10, 100])
def test_sign_changes_are_the_nonzeros_of_the_mask_differences_along_the_segments(points):
    # Formed densely here: the masks of active units at the segment points and their differences along t.
    from smoothness.training.penalties import half_pairs, sign_changes
    _, z, valid, _ = gpl_case()
    za, zb, ok = half_pairs(z, valid)
    t = torch.linspace(0.0, 1.0, points, dtype=z.dtype)[:, None]
    dm = ((za[:, :, None] + t * (zb - za)[:, :, None]) > 0).to(z.dtype).diff(dim=2)      # [M, s, P-1, h]
    dm = (dm * ok[:, :, None, None]).reshape(z.shape[0], -1, z.shape[2])
    mi, ji, ri, sign = sign_changes(z, valid, points)
    dense = torch.zeros_like(dm)
    dense[mi, ri, ji] = sign
    assert torch.equal(dense, dm)
    assert len(mi) == int((dm != 0).sum()) > 0
    assert torch.all(mi[1:] * 1000 + ji[1:] >= mi[:-1] * 1000 + ji[:-1])       # ordered by (model, unit)


@pytest.mark.parametrize("points", [2, 10, 100])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sparse_gpl_gradient_is_the_dense_one(points, dtype):
    # The CPU form (sparse du) against the dense Gram-matrix form the other devices use, per model of a stack with
    # partial batches, units with w2 = 0 and pre-activations at 0.
    from smoothness.training import penalties
    p, z, valid, lam = gpl_case(dtype=dtype)
    a = penalties.penalty_grad_gradient_path_length(p, lam, z, valid, points)
    b = penalties.gradient_path_length_dense_grad(p, lam, z, valid, points)
    tol = dict(rtol=1e-10, atol=1e-13) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-7)
    assert a.dz is None and b.dz is None
    for x, y in ((a.dW1, b.dW1), (a.dw2, b.dw2)):
        assert x.shape == y.shape
        assert torch.allclose(x, y, **tol), float((x - y).abs().max())
        assert float(x[0].abs().max()) > 0 and float(x[2].abs().max()) > 0
    # Each model's gradient is that model's alone: the stack gives what one model gives by itself.
    for k in range(3):
        one = MLPStack([w[k:k + 1] for w in p.weights], [c[k:k + 1] for c in p.biases])
        g = penalties.penalty_grad_gradient_path_length(one, lam[k:k + 1], z[k:k + 1], valid[k:k + 1], points)
        assert torch.allclose(g.dW1[0], a.dW1[k], **tol) and torch.allclose(g.dw2[0], a.dw2[k], **tol)


def test_sparse_gpl_gradient_without_any_sign_change_is_zero():
    from smoothness.training import penalties
    p, z, valid, lam = gpl_case()
    g = penalties.penalty_grad_gradient_path_length(p, lam, z.abs() + 1.0, valid, 10)   # every unit stays on
    assert g.dW1.shape == p.weights[0].shape and g.dw2.shape == p.weights[1].shape
    assert not g.dW1.any() and not g.dw2.any()


@pytest.mark.parametrize("kind", regularizers.TWO_LAYER)
def test_fused_sgd_step_with_a_penalty_matches_plain_autograd_sgd(kind):
    # The trainer folds lam * S's gradient into its fused SGD update; 25 full-batch steps (N = batch = 64) of a
    # 784-32-1 net equal SGD written out with autograd on the generic objective.
    from smoothness.models import forward
    task = images.binary_task("mnist5k", 3, 8)
    rows = task.subset(64, 0)
    widths, lam, lr, steps = (784, 32, 1), {"weights_product": 1e-2}.get(kind, 1e-3), 0.05, 25
    spec = training.TrainSpec(rows, task.pool_y[rows], seed=0, lr=lr, regularizer=kind, lam=lam, max_epochs=steps,
                              threshold=0.0)
    (r,) = training.train_models(task.pool_x, [spec], widths=widths)
    assert r.steps == steps
    p = init_mlp([0], widths)
    x, y = task.pool_x[rows][None], task.pool_y[rows][None]
    valid = torch.ones(1, 64, dtype=torch.bool)
    for epoch in range(steps):   # the trainer's shuffle of the epoch (it pairs the batch points into segments)
        order = rng.permutation_keys(torch.tensor([64]), 64, torch.tensor([[0]]), rng.STREAM_SHUFFLE, epoch)[0]
        q = p.as_leaves()
        with torch.enable_grad():
            obj, _ = regularizers.regularized_loss(q, kind, torch.tensor([lam]), x[:, order], y[:, order], valid)
            grads = torch.autograd.grad(obj.sum(), q.tensors())
        p = MLPStack(*[[t - lr * g for t, g in zip(ts, gs)] for ts, gs in
                       ((p.weights, grads[:2]), (p.biases, grads[2:]))])
    for a, b in zip(r.params.tensors(), p.tensors()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), float((a - b).abs().max())
    assert not torch.allclose(r.params.weights[0], init_mlp([0], widths).weights[0], atol=1e-4)
    with torch.no_grad():
        assert float((forward(r.params, x) - y).square().mean()) < float((forward(init_mlp([0], widths), x) - y)
                                                                         .square().mean())


def test_penalty_points_must_be_an_integer_of_at_least_two():
    with pytest.raises(ValueError, match="points per segment"):
        training.TrainSpec([0], [1.0], regularizer="function_path_length", penalty_points=1)
    with pytest.raises(ValueError, match="one number of penalty points"):
        training.train_models(torch.rand(4, 784), [
            training.TrainSpec([0], [1.0], regularizer="function_path_length", lam=1e-4),
            training.TrainSpec([1], [1.0], regularizer="function_path_length", lam=1e-4, penalty_points=100)])


def test_each_regularizer_is_one_row_naming_a_registered_measure_with_its_cost():
    from smoothness.measures import registry
    named = {m.regularizer for m in registry.REGISTRY if m.regularizer}
    assert named == set(regularizers.BY_NAME) and regularizers.REGULARIZERS == ("none", *regularizers.BY_NAME)
    for r in regularizers.TABLE:
        assert r.measure.regularizer == r.name and r.step_cost > 0 and callable(r.batch)
        assert regularizers.step_cost(r.name) == r.step_cost
    assert regularizers.get("none") is None and regularizers.get("gradient_norm").grad is not None
    with pytest.raises(ValueError, match="unknown regularizer"):
        regularizers.get("nope")

