"""Parameter-space measures against exact computations on tiny nets (full Hessians by autograd)."""
import hashlib
import json

import pytest
import torch

from smoothness.measures import paramspace
from smoothness.models import MLPStack, forward, init_mlp

WIDTHS = (3, 5, 4, 1)  # two hidden layers: 20 + 20 + 4 weights and 5 + 4 + 1 biases = 54 parameters


def tiny(m=3, n=12, seed=0):
    p = init_mlp(list(range(m)), WIDTHS, alpha=3.0)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, n, WIDTHS[0], generator=g)
    y = torch.randn(m, n, generator=g)
    return p, x, y


def flat_loss(p: MLPStack, m: int, x, y, mask=None):
    """The training loss of model m as a function of its flattened parameters."""
    shapes = [t[m].shape for t in p.tensors()]
    nw = len(p.weights)

    def f(theta):
        parts, k = [], 0
        for s in shapes:
            parts.append(theta[k:k + s.numel()].reshape(1, *s))
            k += s.numel()
        q = MLPStack(parts[:nw], parts[nw:])
        err = forward(q, x[m:m + 1])[0] - y[m]
        if mask is not None:
            err = err[mask[m]]
        return err.square().mean()
    theta0 = torch.cat([t[m].reshape(-1) for t in p.tensors()]).double()
    return f, theta0


def exact_hessian(p, m, x, y, mask=None):
    f, theta0 = flat_loss(p.to(torch.float64), m, x.double(), y.double(), mask)
    return torch.autograd.functional.hessian(f, theta0)


def test_hessian_vector_products_match_the_exact_hessian():
    p, x, y = tiny()
    hvp = paramspace.hvp_fn(p.to(torch.float64), x.double(), y.double())
    v = [torch.randn_like(t) for t in p.to(torch.float64).tensors()]
    hv = hvp(v)
    for m in range(3):
        H = exact_hessian(p, m, x, y)
        flat_v = torch.cat([t[m].reshape(-1) for t in v])
        flat_hv = torch.cat([t[m].reshape(-1) for t in hv])
        torch.testing.assert_close(flat_hv, H @ flat_v, rtol=1e-10, atol=1e-10)


def test_sharpness_is_the_top_eigenvalue_of_the_exact_hessian():
    p, x, y = tiny()
    s = paramspace.stack_sharpness(p.to(torch.float64), x.double(), y.double(), iters=2000, tol=1e-12)
    for m in range(3):
        ev = torch.linalg.eigvalsh(exact_hessian(p, m, x, y))
        assert ev[-1] > -ev[0]  # the top eigenvalue is also the largest in magnitude here
        assert float(s.value[m]) == pytest.approx(float(ev[-1]), rel=1e-5)
        assert int(s.iterations[m]) < 2000 and float(s.rel_change[m]) < 1e-12


def test_sharpness_reports_unfinished_iterations():
    p, x, y = tiny()
    s = paramspace.stack_sharpness(p, x, y, iters=3, tol=0.0)
    assert s.iterations.tolist() == [3, 3, 3]
    assert bool((s.rel_change > 0).all())


def test_sharpness_of_a_model_does_not_depend_on_the_batch():
    p, x, y = tiny(m=4)
    all4 = paramspace.stack_sharpness(p, x, y, iters=50)
    alone = paramspace.stack_sharpness(p.select([2]), x[2:3], y[2:3], iters=50)
    assert float(alone.value[0]) == pytest.approx(float(all4.value[2]), rel=1e-5)


def test_hutchinson_trace_matches_the_exact_trace():
    p, x, y = tiny()
    est, se = paramspace.stack_hessian_trace(p.to(torch.float64), x.double(), y.double(), probes=4000)
    for m in range(3):
        tr = float(torch.trace(exact_hessian(p, m, x, y)))
        assert abs(float(est[m]) - tr) < 4 * float(se[m]) + 1e-9
        assert float(se[m]) < 0.05 * abs(tr)


def test_a_masked_training_set_is_the_same_as_the_shorter_one():
    p, x, y = tiny(m=2, n=12)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 7:] = False
    s = paramspace.stack_sharpness(p.to(torch.float64), x.double(), y.double(), mask, iters=2000, tol=1e-12)
    ev = torch.linalg.eigvalsh(exact_hessian(p, 1, x, y, mask))
    assert float(s.value[1]) == pytest.approx(float(ev[-1]), rel=1e-5)
    short = paramspace.training_losses(p.select([1]), x[1:2, :7], y[1:2, :7])
    assert float(paramspace.training_losses(p, x, y, mask)[1]) == pytest.approx(float(short[0]), rel=1e-6)


def test_parameter_norm_and_distance_from_init():
    p = init_mlp([5, 6], WIDTHS, alpha=1.0)
    flat = [torch.cat([t[m].reshape(-1) for t in p.tensors()]) for m in range(2)]
    torch.testing.assert_close(paramspace.parameter_norm(p), torch.stack([f.norm() for f in flat]))
    assert paramspace.distance_from_init(p, [5, 6], 1.0).tolist() == [0.0, 0.0]
    q = p.clone()
    q.weights[0][1, 0, 0] += 3.0
    q.biases[1][1, 2] -= 4.0
    torch.testing.assert_close(paramspace.distance_from_init(q, [5, 6], 1.0), torch.tensor([0.0, 5.0]))


def test_minibatch_gradient_norm_matches_a_loop_over_the_batches():
    p, x, y = tiny(m=2, n=10)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 7:] = False   # model 0: 7 points = batches of 3, 3, 1; model 1: 10 points = 3, 3, 3, 1
    got = paramspace.minibatch_gradient_norm(p.to(torch.float64), x.double(), y.double(), mask, batch_size=3,
                                            seed=4)
    for m, n in ((0, 7), (1, 10)):
        # The batches partition the model's points whatever the order: check the value for the order the
        # function drew, recomputed from it, and that every point was used once.
        keys = paramspace.rng.uniform(torch.full((2, 1), 4), paramspace.STREAM_PROBE, 999,
                                     torch.arange(10)[None, :])
        order = torch.argsort(keys.double() + 2.0 * (~mask), dim=1)[m, :n]
        assert sorted(order.tolist()) == list(range(n))
        sq = []
        for a in range(0, n, 3):
            idx = order[a:a + 3]
            f, theta = flat_loss(p.to(torch.float64), m, x.double()[:, idx], y.double()[:, idx])
            g = torch.func.grad(f)(theta)
            sq.append(float(g @ g))
        assert float(got[m]) == pytest.approx(sum(sq) / len(sq), rel=1e-6)  # returned as float32


def test_the_minibatch_gradient_norm_of_any_family_is_the_mlps_through_its_family_and_loss():
    from smoothness.experiments.configuration.config import RunConfig
    from smoothness.experiments.running.evaluate import family_minibatch_gradient_norm
    from smoothness.models import build
    fam = build(None, (784, 16), (1, 28, 28))
    p = fam.init([2], 1.0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(20, 784, generator=g), torch.where(torch.arange(20) % 2 == 0, -1.0, 1.0)
    c = RunConfig(n_train=20, hidden=(16,), batch_size=8, measure_seed=3)
    want = paramspace.minibatch_gradient_norm(p, x, y, batch_size=8, seed=3)
    torch.testing.assert_close(family_minibatch_gradient_norm(fam, p, x, y, c), want)
    cnn = build({"family": "cnn", "channels": [2], "kernel": 3, "pool": "max"}, None, (1, 28, 28))
    got = family_minibatch_gradient_norm(cnn, cnn.init([0, 1], 1.0), x, y, c)
    assert got.shape == (2,) and bool((got > 0).all())


def test_grid_records_the_parameter_measures(tmp_path):
    from smoothness.experiments.configuration import grid
    from smoothness.experiments.running import runner
    from smoothness.experiments.storage.store import Store
    raw = {"name": "curv", "pairs": [[3, 8]], "n_train": [32], "seeds": [0, 1], "hidden": 16, "lr": 0.05,
           "threshold": 1e-3, "measure": {"segments": 4, "points": 16, "points_per_segment": 8,
                                          "sharpness_iters": 200, "trace_probes": 8}}
    g = grid.parse(raw)
    plain = grid.parse({k: v for k, v in raw.items() if k != "measure"})
    c = plain.configs()[0]
    # With the new measures off (and the default optimizer, rho and precision) a config keeps the key it had before
    # these options existed, so earlier stores stay valid.
    d = {k: v for k, v in c.__dict__.items()
         if k not in ("sharpness_iters", "trace_probes", "optimizer", "matmul_precision", "rho", "penalty_points",
                      "train_seed", "model", "loss", "classes")}
    d.update(pair=list(c.pair), hidden=list(c.hidden), lr=float(c.lr), alpha=float(c.alpha),
             threshold=float(c.threshold), lam=float(c.lam))
    old = hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:24]
    assert grid.config_key(c) == old
    assert grid.config_key(g.configs()[0]) != old
    s = runner.run_grid(g, tmp_path, device="cpu", progress=False)
    assert s.trained == 2
    with Store(tmp_path) as st:
        for rec in st.records():
            assert rec["status"] == "converged"
            p = st.params(rec["key"])
            from smoothness.data import images
            t = images.binary_task("mnist5k", 3, 8)
            sub = t.subset(32, rec["seed"])
            x, y = t.pool_x[sub][None], t.pool_y[sub][None]
            ref = paramspace.stack_sharpness(p, x, y, iters=200, seed=0)
            assert rec["sharpness"] == pytest.approx(float(ref.value[0]), rel=1e-5)
            assert rec["sharpness"] > 0 and rec["sharpness_iterations"] <= 200
            assert rec["hessian_trace"] > 0 and rec["hessian_trace_se"] >= 0
            assert rec["distance_from_init"] > 0
            assert rec["parameter_norm"] == pytest.approx(float(paramspace.parameter_norm(p)[0]), rel=1e-6)
            from smoothness.measures import registry  # every column of every registered measure, options on
            assert all(c in rec for m in registry.REGISTRY for c in registry.columns(m)), rec.keys()
            assert rec["minibatch_gradient_norm"] >= 0


def test_the_old_keyword_of_sharpness_still_works_with_a_deprecation_warning():
    from torch import nn

    from smoothness.measures import curvature as short
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    x, y = torch.randn(20, 3), torch.randn(20)
    with pytest.warns(DeprecationWarning, match=r"is now curvature.sharpness\(steps=...\)"):
        old = short.sharpness(f, x, y, iters=30, fast=False)
    assert float(old) == float(short.sharpness(f, x, y, steps=30, fast=False))


def test_the_stack_kernels_old_names_warn_and_give_the_same_functions():
    for old, new in (("sharpness", "stack_sharpness"), ("hessian_trace", "stack_hessian_trace")):
        with pytest.warns(DeprecationWarning, match=f"paramspace.{old} is now paramspace.{new}"):
            assert getattr(paramspace, old) is getattr(paramspace, new)
