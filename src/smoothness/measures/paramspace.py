"""Measures in parameter space, batched over a stack of M models: sharpness (top Hessian eigenvalue
of the training loss), Hessian trace, parameter norm, distance from initialization, and the mean
squared minibatch gradient norm (the implicit regularizer of Smith et al., 2021).

The training loss of model m is L_m(θ) = mean_i (f_θ(x_mi) − y_mi)² over its own training points
(eq. 2); points are given as x [M, n, d], y [M, n] with an optional mask [M, n] for training sets
of different sizes. Models are independent, so the gradient of Σ_m L_m with respect to the stacked
parameters is every model's own gradient, and one double-backward pass gives every model's
Hessian-vector product H_m v_m at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from smoothness.models import MLPStack, init_mlp, mse
from smoothness.runtime import precision, rng

STREAM_PROBE = 6   # random vectors of the power iteration and of Hutchinson's estimator
DEFAULT_ITERS = 100
DEFAULT_TOL = 1e-4
DEFAULT_PROBES = 32


def _points(p: MLPStack, x, y, mask):
    t = p.tensors()[0]
    x = torch.as_tensor(x, dtype=t.dtype, device=t.device)
    y = torch.as_tensor(y, dtype=x.dtype, device=x.device)
    if x.dim() == 2:
        x, y = x.expand(p.n_models, *x.shape), y.expand(p.n_models, *y.shape)
    if mask is None:
        mask = torch.ones(y.shape, dtype=torch.bool, device=x.device)
    return x, y, mask.to(x.device)


def training_losses(p: MLPStack, x, y, mask=None) -> torch.Tensor:
    """Eq. 2 per model over its masked points, differentiable in p. [M]."""
    x, y, mask = _points(p, x, y, mask)
    return mse(p, x, y, mask)[0]


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Per-model inner product of two parameter-shaped lists. [M]."""
    return sum((u * v).flatten(1).sum(1) for u, v in zip(a, b))


def hvp_fn(p: MLPStack, x, y, mask=None):
    """A function v -> H v (per model, v a list shaped like p.tensors()) for the training losses."""
    x, y, mask = _points(p, x, y, mask)
    q = p.as_leaves()
    leaves = q.tensors()
    with torch.enable_grad():
        grads = torch.autograd.grad(training_losses(q, x, y, mask).sum(), leaves, create_graph=True)

    def hvp(v: list[torch.Tensor]) -> list[torch.Tensor]:
        with torch.enable_grad():
            return list(torch.autograd.grad(_dot(grads, v).sum(), leaves, retain_graph=True))
    return hvp


def _probe(p: MLPStack, seed: int, draw: int, rademacher: bool) -> list[torch.Tensor]:
    """A random parameter-shaped vector per model, from the counter-based generator (so it does not
    depend on M): Rademacher ±1 or uniform on [−1, 1]."""
    out = []
    for k, t in enumerate(p.tensors()):
        idx = torch.arange(t[0].numel(), device=t.device).reshape(1, *t.shape[1:])
        seeds = torch.full((t.shape[0],) + (1,) * (t.dim() - 1), seed, dtype=torch.int64, device=t.device)
        u = rng.uniform(seeds, STREAM_PROBE, draw * 64 + k, idx, device=t.device).to(t.dtype)
        out.append(torch.where(u < 0.5, -1.0, 1.0).to(t.dtype) if rademacher else 2 * u - 1)
    return out


@dataclass
class Sharpness:
    """Top Hessian eigenvalue per model, with how the power iteration ended: its last relative change
    and the iterations used (the iteration stops for a model once the change is below tol)."""

    value: torch.Tensor        # [M]
    rel_change: torch.Tensor   # [M]
    iterations: torch.Tensor   # [M] int


@precision.strict_fp32()
def stack_sharpness(p: MLPStack, x, y, mask=None, *, iters: int = DEFAULT_ITERS, tol: float = DEFAULT_TOL,
              seed: int = 0) -> Sharpness:
    """Largest eigenvalue of the Hessian of the training loss w.r.t. the parameters, per model, by power
    iteration on Hessian-vector products (the eigenvalue of largest magnitude: the top one whenever the
    Hessian has no negative eigenvalue larger in magnitude, as at a minimum)."""
    hvp = hvp_fn(p, x, y, mask)
    v = _probe(p, seed, 0, rademacher=False)
    m = p.n_models
    lam = torch.zeros(m, dtype=torch.float64, device=v[0].device)
    change = torch.full_like(lam, float("inf"))
    used = torch.zeros(m, dtype=torch.int64, device=v[0].device)
    done = torch.zeros(m, dtype=torch.bool, device=v[0].device)
    for it in range(1, iters + 1):
        norm = _dot(v, v).sqrt().clamp_min(1e-30)
        v = [t / norm.view(-1, *([1] * (t.dim() - 1))) for t in v]
        hv = hvp(v)
        new = _dot(v, hv).double()                          # Rayleigh quotient v·Hv, |v| = 1
        rel = (new - lam).abs() / new.abs().clamp_min(1e-30)
        live = ~done
        lam = torch.where(live, new, lam)
        change = torch.where(live, rel, change)
        used = torch.where(live, torch.full_like(used, it), used)
        done = done | (rel < tol)
        v = [torch.where(live.view(-1, *([1] * (t.dim() - 1))), h, t) for h, t in zip(hv, v)]
        if bool(done.all()):
            break
    return Sharpness(lam.float(), change.float(), used)


@precision.strict_fp32()
def stack_hessian_trace(p: MLPStack, x, y, mask=None, *, probes: int = DEFAULT_PROBES, seed: int = 0):
    """Hutchinson's estimate of tr H per model: the mean of z·Hz over Rademacher vectors z.
    Returns (estimate [M], its standard error [M])."""
    hvp = hvp_fn(p, x, y, mask)
    vals = torch.stack([_dot(z, hvp(z)) for z in (_probe(p, seed, 1 + k, rademacher=True)
                                                   for k in range(probes))]).double()
    se = vals.std(0) / probes ** 0.5 if probes > 1 else torch.full_like(vals[0], float("nan"))
    return vals.mean(0).float(), se.float()


def parameter_norm(p: MLPStack) -> torch.Tensor:
    """Euclidean norm of all weights and biases of each model. [M]."""
    return _dot(p.tensors(), p.tensors()).sqrt()


def distance_from_init(p: MLPStack, seeds, alpha) -> torch.Tensor:
    """‖θ − θ₀‖ per model, θ₀ regenerated from each model's seed and α (the initializer is a pure
    function of them). [M]."""
    p0 = init_mlp(seeds, p.widths, alpha, device=p.weights[0].device, dtype=p.weights[0].dtype)
    diff = [a - b for a, b in zip(p.tensors(), p0.tensors())]
    return _dot(diff, diff).sqrt()


@precision.strict_fp32()
def minibatch_gradient_norm(p: MLPStack, x, y, mask=None, *, batch_size: int = 64, seed: int = 0,
                            losses=training_losses) -> torch.Tensor:
    """Smith et al.'s implicit regularizer at θ: the mean over the minibatches of one shuffled epoch of
    ‖∇_θ L_b(θ)‖², L_b the MSE on batch b (the last, partial batch included). [M]. p is a stack of MLPs, or of
    any family with `losses(q, xb, yb, valid)` its batch losses [M] (models.losses.mean_loss of Family.values)."""
    x, y, mask = _points(p, x, y, mask)
    n = mask.sum(1)
    nmax = y.shape[1]
    # Valid points first, in an order drawn per model: sort by (invalid, random key).
    keys = rng.uniform(torch.full((p.n_models, 1), seed, device=x.device), STREAM_PROBE, 999,
                       torch.arange(nmax, device=x.device)[None, :], device=x.device)
    order = torch.argsort(keys + 2.0 * (~mask), dim=1)
    q = p.as_leaves()
    leaves = q.tensors()
    total = torch.zeros(p.n_models, dtype=torch.float64, device=x.device)
    batches = torch.zeros(p.n_models, dtype=torch.float64, device=x.device)
    for a in range(0, nmax, batch_size):
        j = order[:, a:a + batch_size]
        pos = torch.arange(a, a + j.shape[1], device=x.device)[None, :]
        valid = pos < n[:, None]
        has = valid.any(1)
        if not bool(has.any()):
            break
        xb = x.gather(1, j[..., None].expand(-1, -1, x.shape[2]))
        yb = y.gather(1, j)
        with torch.enable_grad():
            g = torch.autograd.grad(losses(q, xb, yb, valid | ~has[:, None]).sum(), leaves)
        total += torch.where(has, _dot(g, g).double(), 0.0)
        batches += has.double()
    return (total / batches).float()


# The names of version 0.1 (one name per quantity: curvature.sharpness and curvature.hessian_trace measure any model,
# these their fast path for a stack of MLPs); DeprecationWarning, removed in version 0.3.
_OLD_NAMES = {"sharpness": "stack_sharpness", "hessian_trace": "stack_hessian_trace"}


def __getattr__(name):
    if name in _OLD_NAMES:
        import warnings
        warnings.warn(f"paramspace.{name} is now paramspace.{_OLD_NAMES[name]} (curvature.{name} measures any model); "
                      "the old name goes in smoothness 0.3", DeprecationWarning, stacklevel=2)
        return globals()[_OLD_NAMES[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
