import pytest
import torch

from smoothness import training
from smoothness.data import images
from smoothness.models import MLPStack, init_mlp
from smoothness.training import optimizers, regularizers
from tolerance import assert_same_trajectory, kernel_noise


@pytest.fixture(scope="module")
def task():
    return images.binary_task("mnist5k", 3, 8)


def reference(task, rows, optimizer, regularizer, lam, lr, steps, widths):
    """torch.optim on one model, full batch (N = batch size), the objective built from the same definitions."""
    p = init_mlp([0], widths)
    leaves = [t.clone().requires_grad_(True) for t in p.tensors()]
    q = MLPStack(leaves[:len(p.weights)], leaves[len(p.weights):])
    opt = (torch.optim.SGD(leaves, lr=lr, momentum=0.9) if optimizer == "momentum" else
           torch.optim.Adam(leaves, lr=lr, betas=(0.9, 0.999), eps=1e-8))
    x, y = task.pool_x[rows][None], task.pool_y[rows][None]
    valid = torch.ones(1, len(rows), dtype=torch.bool)
    for _ in range(steps):
        opt.zero_grad()
        if regularizer == "none":
            from smoothness.models import forward
            obj = (forward(q, x) - y).square().mean(1)
        else:
            obj, _ = regularizers.regularized_loss(q, regularizer, torch.tensor([lam]), x, y, valid)
        obj.sum().backward()
        opt.step()
    return [t.detach() for t in leaves]


@pytest.mark.parametrize("optimizer,regularizer,lr", [("momentum", "none", 0.01), ("adam", "none", 1e-3),
                                                      ("adam", "gradient_norm", 1e-3)])
def test_optimizer_matches_torch_optim(task, optimizer, regularizer, lr):
    widths = (784, 32, 1)
    rows = task.subset(64, 0)
    lam = 1e-3 if regularizer != "none" else 0.0
    spec = training.TrainSpec(rows, task.pool_y[rows], seed=0, lr=lr, optimizer=optimizer, regularizer=regularizer,
                              lam=lam, max_epochs=30, threshold=0.0)
    (r,) = training.train_models(task.pool_x, [spec], widths=widths)   # N = batch = 64: one step per epoch
    assert r.steps == 30
    ref = reference(task, rows, optimizer, regularizer, lam, lr, 30, widths)
    for a, b in zip(r.params.tensors(), ref):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), float((a - b).abs().max())
    # and the updates are not trivial: the weights moved away from the initialization
    assert not torch.allclose(r.params.weights[0], init_mlp([0], widths).weights[0], atol=1e-4)


def sam_reference(task, rows, regularizer, lam, lr, rho, steps, widths):
    """SAM on one model written out with autograd (Foret et al. 2021): e = rho g / ||g||, step with g(w + e)."""
    from smoothness.models import forward
    p = init_mlp([0], widths)
    w = [t.clone() for t in p.tensors()]
    x, y = task.pool_x[rows][None], task.pool_y[rows][None]
    valid = torch.ones(1, len(rows), dtype=torch.bool)
    n = len(p.weights)

    def grad(ts):
        leaves = [t.clone().requires_grad_(True) for t in ts]
        q = MLPStack(leaves[:n], leaves[n:])
        if regularizer == "none":
            obj = (forward(q, x) - y).square().mean(1)
        else:
            obj, _ = regularizers.regularized_loss(q, regularizer, torch.tensor([lam]), x, y, valid)
        return torch.autograd.grad(obj.sum(), leaves)

    for _ in range(steps):
        g = grad(w)
        norm = torch.sqrt(sum((t * t).sum() for t in g))
        g2 = grad([t + rho * gt / norm for t, gt in zip(w, g)])
        w = [t - lr * gt for t, gt in zip(w, g2)]
    return w


@pytest.mark.parametrize("regularizer", ["none", "gradient_norm"])
def test_sam_matches_a_one_model_implementation(task, regularizer):
    widths = (784, 32, 1)
    rows = task.subset(64, 0)
    lam = 1e-3 if regularizer != "none" else 0.0
    spec = training.TrainSpec(rows, task.pool_y[rows], seed=0, lr=0.05, optimizer="sam", rho=0.05,
                              regularizer=regularizer, lam=lam, max_epochs=30, threshold=0.0)
    (r,) = training.train_models(task.pool_x, [spec], widths=widths)   # N = batch = 64: one step per epoch
    ref = sam_reference(task, rows, regularizer, lam, 0.05, 0.05, 30, widths)
    for a, b in zip(r.params.tensors(), ref):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), float((a - b).abs().max())
    # and SAM is not SGD: the same model trained by SGD ends elsewhere
    sgd = training.train_models(task.pool_x, [training.TrainSpec(rows, task.pool_y[rows], seed=0, lr=0.05,
                                                                 regularizer=regularizer, lam=lam, max_epochs=30,
                                                                 threshold=0.0)], widths=widths)[0]
    assert not torch.allclose(sgd.params.weights[0], r.params.weights[0], atol=1e-5)


def test_sam_radius_is_checked(task):
    rows = task.subset(64, 0)
    assert training.TrainSpec(rows, task.pool_y[rows], optimizer="sam").rho == optimizers.SAM_RHO
    with pytest.raises(ValueError, match="needs optimizer sam"):
        training.TrainSpec(rows, task.pool_y[rows], rho=0.1)
    with pytest.raises(ValueError, match="finite number > 0"):
        training.TrainSpec(rows, task.pool_y[rows], optimizer="sam", rho=-1.0)


@pytest.mark.invariance
@pytest.mark.parametrize("optimizer", ["momentum", "adam", "sam"])
def test_model_with_optimizer_state_is_the_same_alone_and_in_a_batch(task, optimizer):
    lr = optimizers.ADAM_LR if optimizer == "adam" else 0.01

    def spec(n, seed, cap):
        rows = task.subset(n, seed)
        return training.TrainSpec(rows, task.pool_y[rows], seed=seed, lr=lr, optimizer=optimizer, max_epochs=cap)

    target = spec(100, 0, 60)
    alone = training.train_models(task.pool_x, [target])[0]
    batch = training.train_models(task.pool_x, [spec(64, 1, 20), target, spec(150, 2, 40)], max_batch=2)[1]
    assert_same_trajectory(alone, batch)
    with kernel_noise():   # another CPU's kernels: Adam divides by sqrt(v), which must not blow up last-bit noise
        noisy = training.train_models(task.pool_x, [spec(64, 1, 20), target, spec(150, 2, 40)], max_batch=2)[1]
    assert_same_trajectory(alone, noisy)


def test_adam_converges_and_optimizers_are_checked(task):
    rows = task.subset(128, 0)
    (r,) = training.train_models(task.pool_x, [training.TrainSpec(rows, task.pool_y[rows], optimizer="adam",
                                                                  lr=1e-3, threshold=1e-4, max_epochs=500)])
    assert r.status == training.CONVERGED
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        training.TrainSpec(rows, task.pool_y[rows], optimizer="rmsprop")
    with pytest.raises(ValueError, match="one optimizer"):
        training.train_models(task.pool_x, [training.TrainSpec(rows, task.pool_y[rows], optimizer=o)
                                            for o in ("sgd", "adam")])
