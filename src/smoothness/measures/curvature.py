"""Curvature of the training loss of any model (PyTorch module) with any loss: sharpness (the top Hessian
eigenvalue) and the top k, the Hessian trace, and the eigenvalue density, by Hessian-vector products through
torch.func (forward-over-reverse: the jvp of the gradient), over a tensor pair (x, y) or a DataLoader.

The loss over the data is the mean over all points, L(theta) = sum_b (n_b / N) L_b(theta) for batches b of n_b
points with mean-reduced batch losses L_b, so a DataLoader gives the Hessian of the tensor of its points (memory:
one batch). loss: a callable loss(outputs, targets) -> scalar mean over the batch (torch.nn.CrossEntropyLoss(),
F.cross_entropy, ...), or 'mse' (eq. 2 of Volhejn & Lampert: mean (f(x) - y)^2, f's [n, 1] output read as [n]) or
'cross_entropy'; None picks cross_entropy for integer targets and K > 1 outputs, else mse (losses.py).

For a ReLU MLP of this package (or an nn.Sequential of Linear and ReLU layers) with the mse loss on tensors,
sharpness and the trace take the batched fast path of paramspace.py unless fast=False; tests check that both
paths agree with each other and with the dense Hessian.

Before any work (checks.py): x and y are dense, real and finite; the model's output on the first point is one
tensor per point; for the named losses the targets fit the outputs (the mse: as many values per point as outputs;
the cross-entropy: labels 0 to K - 1, or probabilities [n, K]), checked on every batch; the Lanczos basis fits in
memory. A model with non-finite parameters gets a warning and NaN; a Hessian-vector product that is not finite
(an overflow, or NaN from the model or the loss) gives NaN with a warning.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jvp

from smoothness.errors import MeasureError, MeasureTypeError
from smoothness.measures import anymodule, checks, lanczos, paramspace, stream
from smoothness.measures import inputspace as ins
from smoothness.measures.estimate import Estimate, exact, mean_and_se
from smoothness.measures.losses import check_targets, resolve_loss
from smoothness.models import MLPStack, ReLUMLP
from smoothness.runtime import precision
from smoothness.runtime.progress import Bar

DEFAULT_STEPS = 100      # Lanczos steps at most (top eigenvalues: until converged; density: exactly these)
DEFAULT_TOL = 1e-4       # top eigenvalues: stop when every residual is below tol x |value|
DEFAULT_PROBES = 100     # Hutchinson probe vectors
DEFAULT_RUNS = 4         # independent stochastic Lanczos quadrature runs of the density


def _batches(data, targets, batch_size):
    """(x, y) batches of the data: tensors split in batch_size points (all at once for None), or a loader's."""
    if stream.is_stream(data):
        if targets is not None:
            raise MeasureError("targets are given with the batches of a DataLoader: pass (x, y) batches instead")
        for x, y in stream.batches(data, with_targets=True):
            if y is None:
                raise MeasureError("the curvature of a loss needs targets: the batches must be (x, y)")
            yield x, y
        return
    if targets is None:
        raise MeasureError("the curvature of a loss needs targets y: pass x and y, or a DataLoader of (x, y)")
    x, y = stream.as_tensor(data), stream.as_tensor(targets)
    if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise MeasureError(f"x has shape {tuple(x.shape)} and y {tuple(y.shape)}: the numbers of points and targets "
                           "must match (one row each, at least one)")
    step = batch_size or x.shape[0]
    for i in range(0, x.shape[0], step):
        yield x[i:i + step], y[i:i + step]


class HessianOperator:
    """The Hessian of the loss over the data w.r.t. the model's trainable parameters, as a linear operator on flat
    vectors (`matvec`), read batch by batch. `dim` parameters; `gradient()` the flat gradient."""

    def __init__(self, model: nn.Module, data, targets=None, loss=None, *, batch_size: int | None = None):
        if not isinstance(model, nn.Module):
            raise MeasureTypeError(f"the curvature is of an nn.Module's parameters; got {type(model).__name__}")
        if isinstance(model, torch.jit.ScriptModule):
            raise MeasureTypeError("the curvature takes the parameters as inputs (torch.func), which a TorchScript "
                                   "module cannot: save the model with torch.export, or as a state dict for its "
                                   "nn.Module")
        anymodule.check_mode(model)
        stream.check_reiterable(data, "the Hessian operator")
        data, targets = _checked(data, targets)
        self.model, self.data, self.targets, self.batch_size = model, data, targets, batch_size
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        if not self.names:
            raise MeasureError("the model has no trainable parameters")
        params = dict(model.named_parameters())
        self.params = {n: params[n].detach() for n in self.names}
        self.frozen = {n: p.detach() for n, p in params.items() if n not in self.params}
        self.buffers = {n: b.detach() for n, b in model.named_buffers()}
        self.shapes = [self.params[n].shape for n in self.names]
        self.sizes = [self.params[n].numel() for n in self.names]
        self.dim = sum(self.sizes)
        first = self.params[self.names[0]]
        self.dtype, self.device = first.dtype, first.device
        self._loss_spec, self._loss, self._row = loss, None, None

    def _unflat(self, v: torch.Tensor) -> dict:
        return {n: t.reshape(s) for n, t, s in zip(self.names, v.split(self.sizes), self.shapes)}

    def _flat(self, d: dict) -> torch.Tensor:
        return torch.cat([d[n].reshape(-1) for n in self.names])

    def _batch_loss(self, x, y):
        def loss(params):
            out = functional_call(self.model, ({**params, **self.frozen}, self.buffers), (x,))
            return self._loss(out, y)
        return loss

    def _resolve(self, x, y) -> None:
        """The loss, from the model's output on the first point (the model's failure there is one line); for a
        named loss the output must be one tensor per point, whose shape the targets are checked against."""
        with torch.no_grad():
            out = checks.call(self.model, x[:1])
        if self._loss_spec is None or isinstance(self._loss_spec, str):
            self._row = tuple(checks.output(out, 1).shape[1:])
        self._loss = resolve_loss(self._loss_spec, out, y[:1])

    def _each(self):
        for x, y in _batches(self.data, self.targets, self.batch_size):
            x = x.to(self.device, self.dtype if x.is_floating_point() else x.dtype)
            y = y.to(self.device)
            if self._loss is None:
                self._resolve(x, y)
            if self._row is not None:
                check_targets(self._loss, self._row, y, chosen=self._loss_spec is None)
            yield x, y

    def check(self) -> None:
        """The checks of the data before any work: the loss resolved on the first point, and the targets of every
        batch of a tensor (of a DataLoader: its first batch; the others are checked as they are read)."""
        for i, _ in enumerate(self._each()):
            if stream.is_stream(self.data) and i == 0:
                return

    def _mean(self, fn) -> torch.Tensor:
        total, n = None, 0
        for x, y in self._each():
            part = fn(self._batch_loss(x, y)).detach() * x.shape[0]
            total = part if total is None else total + part
            n += x.shape[0]
        if n == 0:
            raise MeasureError("the data holds no points")
        return total / n

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector v [dim]."""
        tangent = self._unflat(v.to(self.device, self.dtype))
        return self._mean(lambda loss: self._flat(jvp(grad(loss), (self.params,), (tangent,))[1]))

    def gradient(self) -> torch.Tensor:
        """The gradient of the loss over the data, flat [dim]."""
        return self._mean(lambda loss: self._flat(grad(loss)(self.params)))

    def loss(self) -> float:
        """The loss over the data."""
        with torch.no_grad():
            return float(self._mean(lambda loss: loss(self.params)))


class Eigenvalue(Estimate):
    """A Hessian eigenvalue from the Lanczos iteration: the Ritz value, with `residual` ||H y - value y|| (an
    eigenvalue lies within it) and n the Lanczos steps taken; se 0 (it is not a Monte Carlo mean)."""

    __slots__ = ("residual",)

    def __new__(cls, value, residual: float, steps: int):
        obj = Estimate.__new__(cls, value, 0.0, steps)
        obj.residual = float(residual)
        return obj

    def as_dict(self) -> dict:
        return {**super().as_dict(), "residual": self.residual}

    def __repr__(self) -> str:
        return f"Eigenvalue({float(self)!r}, residual={self.residual:.3g}, steps={self.n})"

    def __reduce__(self):
        return Eigenvalue, (float(self), self.residual, self.n)


def _fast(model, data, targets, loss, fast: bool):
    """The ReLU stack of model where the batched fast path applies (float targets [n] for points [n, d]), else
    None."""
    p = ins.relu_stack(module_of(model))
    if (p is None or not fast or loss not in (None, "mse") or stream.is_stream(data) or targets is None
            or not stream.as_tensor(targets).is_floating_point() or stream.as_tensor(targets).dim() != 1
            or stream.as_tensor(data).dim() != 2 or not stream.as_tensor(data).is_floating_point()
            or stream.as_tensor(data).shape[0] != stream.as_tensor(targets).shape[0]):
        return None
    return p


def _checked(data, targets):
    """data and targets checked before any work: stream.checked (a tensor's points dense, real and finite, a
    stream's batches as they are read); the targets alike."""
    data = stream.checked(data, "x")
    if targets is not None:
        targets = checks.values(stream.as_tensor(targets), "y")
    return data, targets


def check_basis(steps: int, op: HessianOperator) -> None:
    """A MeasureError, before any work, if the Lanczos basis (steps vectors of the parameters, float64, stacked
    once more at each step) does not fit in memory."""
    checks.fits(2 * steps * op.dim * 8, f"the Lanczos basis of {steps:,} steps x {op.dim:,} parameters (float64)",
                "use fewer steps", op.device)


def _not_finite(what: str) -> None:
    warnings.warn(f"the Hessian-vector product is not finite (NaN or Inf) at these parameters and points: an "
                  f"overflow, or NaN from the model or the loss; {what} is NaN", stacklevel=3)


def module_of(model) -> nn.Module:
    """model as an nn.Module (an MLPStack of one model as its ReLUMLP)."""
    if isinstance(model, MLPStack):
        if model.n_models != 1:
            raise MeasureError(f"a stack of {model.n_models} models: these functions measure one model (the batched "
                               "smoothness.measures.paramspace measures a stack at once)")
        return ReLUMLP.from_stack(model)
    return model


def _start(dim: int, seed: int, rademacher: bool, dtype, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randint(0, 2, (dim,), generator=g).double() * 2 - 1 if rademacher else torch.randn(dim, generator=g,
                                                                                                  dtype=torch.float64)
    return v.to(device=device, dtype=dtype)


@precision.strict_fp32()
def top_eigenvalues(model: nn.Module, data, targets=None, loss=None, k: int = 1, *, steps: int = DEFAULT_STEPS,
                    tol: float = DEFAULT_TOL, seed: int = 0, batch_size: int | None = None,
                    progress=None) -> list[Eigenvalue]:
    """The k largest eigenvalues of the Hessian of the loss, largest first, by the Lanczos iteration (full
    reorthogonalization) from a seeded Gaussian start, until each residual is below tol x |value| or after `steps`
    Hessian-vector products (each a pass over the data). Each is an Eigenvalue with its residual bound."""
    if k < 1:
        raise MeasureError(f"k must be >= 1; got {k}")
    op = HessianOperator(module_of(model), data, targets, loss, batch_size=batch_size)
    steps = min(steps, op.dim)
    if k > steps:
        raise MeasureError(f"k = {k} eigenvalues need at least k Lanczos steps; the model has {op.dim} parameters "
                           f"and steps = {steps}")
    if not checks.parameters_finite(model):
        return [Eigenvalue(math.nan, math.nan, 0) for _ in range(k)]
    op.check()
    check_basis(steps, op)

    def converged(alpha, beta, b):
        if len(alpha) < k:
            return False
        values, res, _ = lanczos.ritz(alpha, beta, b)
        return bool((res[-k:] <= tol * values[-k:].abs().clamp_min(1e-30)).all())

    with torch.no_grad(), Bar(steps, "Hessian eigenvalues", "hvp", progress) as bar:
        alpha, beta, b = lanczos.run(op.matvec, _start(op.dim, seed, False, op.dtype, op.device), steps,
                                     converged, bar.update)
    if not math.isfinite(b):
        _not_finite("the top eigenvalue" if k == 1 else f"each of the top {k} eigenvalues")
    values, res, _ = lanczos.ritz(alpha, beta, b)
    top = values.flip(0)[:k].tolist(), res.flip(0)[:k].tolist()
    return [Eigenvalue(v, r, len(alpha)) for v, r in zip(*top)]


def sharpness(model: nn.Module, data, targets=None, loss=None, *, steps: int = DEFAULT_STEPS,
              tol: float = DEFAULT_TOL, seed: int = 0, fast: bool = True, batch_size: int | None = None,
              progress=None) -> Eigenvalue:
    """The largest eigenvalue of the Hessian of the loss (top_eigenvalues with k = 1). A ReLU MLP with the mse loss
    on tensors takes paramspace.sharpness (power iteration) unless fast=False; its residual is then NaN and n the
    power iterations."""
    data, targets = _checked(data, targets)
    if not checks.parameters_finite(model):
        return Eigenvalue(math.nan, math.nan, 0)
    p = _fast(model, data, targets, loss, fast)
    if p is not None:
        s = paramspace.sharpness(p, data, targets, iters=steps, tol=tol, seed=seed)
        return Eigenvalue(float(s.value[0]), float("nan"), int(s.iterations[0]))
    return top_eigenvalues(model, data, targets, loss, 1, steps=steps, tol=tol, seed=seed, batch_size=batch_size,
                           progress=progress)[0]


@precision.strict_fp32()
def hessian_trace(model: nn.Module, data, targets=None, loss=None, *, probes: int = DEFAULT_PROBES, seed: int = 0,
                  fast: bool = True, batch_size: int | None = None, progress=None) -> Estimate:
    """Hutchinson's estimate of tr H: the mean of z . H z over `probes` Rademacher vectors z, with its standard error
    over the probes (n = probes). A ReLU MLP with the mse loss on tensors takes paramspace.hessian_trace (other
    probe vectors, the same estimator) unless fast=False."""
    if probes < 1:
        raise MeasureError(f"probes must be >= 1; got {probes}")
    data, targets = _checked(data, targets)
    if not checks.parameters_finite(model):
        return checks.not_computed()
    p = _fast(model, data, targets, loss, fast)
    if p is not None:
        value, se = paramspace.hessian_trace(p, data, targets, probes=probes, seed=seed)
        return Estimate(float(value[0]), float(se[0]), probes)
    op = HessianOperator(module_of(model), data, targets, loss, batch_size=batch_size)
    op.check()
    total = sq = torch.zeros(1, dtype=torch.float64)
    with torch.no_grad(), Bar(probes, "Hessian trace", "probe", progress) as bar:
        for i in range(probes):
            z = _start(op.dim, seed * 100003 + i, True, op.dtype, op.device)
            q = float(z.double() @ op.matvec(z).double())
            if not math.isfinite(q):
                _not_finite("the Hessian trace")
                return Estimate(math.nan, math.nan, i + 1)
            total, sq = total + q, sq + q * q
            bar.update()
    mean, se = mean_and_se(total, sq, probes)
    return Estimate(float(mean[0]), float(se[0]), probes)


@dataclass
class Density:
    """The Hessian's eigenvalue density by stochastic Lanczos quadrature: per run r, the Gauss quadrature nodes
    [runs, m] (Ritz values) and weights [runs, m] (summing to 1) of the spectral measure seen from a random
    vector; the density is their mean over runs, smoothed by a Gaussian kernel (curve). dim: the number of
    parameters."""

    nodes: np.ndarray
    weights: np.ndarray
    dim: int

    @property
    def runs(self) -> int:
        return self.nodes.shape[0]

    def trace(self) -> Estimate:
        """tr H = dim x the mean of sum_i w_i theta_i (each run's z . H z / |z|^2 times dim), with its se over runs."""
        per_run = self.dim * (self.weights * self.nodes).sum(1)
        return _estimate(per_run)

    def curve(self, grid=None, sigma: float | None = None, points: int = 1000):
        """(grid, density, se): the density phi(t) = mean over runs of sum_i w_i N(t; theta_i, sigma^2) on the grid
        (default: `points` values spanning the nodes with 3 sigma margins; sigma default: 1% of the nodes' span),
        with its standard error over the runs. It integrates to 1 over the real line."""
        lo, hi = float(self.nodes.min()), float(self.nodes.max())
        if sigma is None:
            sigma = max(0.01 * (hi - lo), 1e-12 * max(abs(lo), abs(hi), 1.0))
        grid = np.linspace(lo - 3 * sigma, hi + 3 * sigma, points) if grid is None else np.asarray(grid, float)
        kernel = np.exp(-0.5 * ((grid[None, None, :] - self.nodes[..., None]) / sigma) ** 2) / (sigma * math.sqrt(
            2 * math.pi))
        per_run = (self.weights[..., None] * kernel).sum(1)       # [runs, grid]
        se = per_run.std(0, ddof=1) / math.sqrt(self.runs) if self.runs > 1 else np.full(grid.shape, np.nan)
        return grid, per_run.mean(0), se


def _estimate(draws: np.ndarray) -> Estimate:
    n = draws.shape[0]
    return Estimate(float(draws.mean()), float(draws.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"), n)


@precision.strict_fp32()
def eigenvalue_density(model: nn.Module, data, targets=None, loss=None, *, runs: int = DEFAULT_RUNS,
                       steps: int = DEFAULT_STEPS, seed: int = 0, batch_size: int | None = None,
                       progress=None) -> Density:
    """The Hessian's eigenvalue density by stochastic Lanczos quadrature: `runs` Lanczos runs of `steps` steps (at
    most the number of parameters) from Rademacher vectors; see Density."""
    if runs < 1:
        raise MeasureError(f"runs must be >= 1; got {runs}")
    op = HessianOperator(module_of(model), data, targets, loss, batch_size=batch_size)
    steps = min(steps, op.dim)
    if not checks.parameters_finite(model):
        return Density(np.full((runs, steps), np.nan), np.full((runs, steps), np.nan), op.dim)
    op.check()
    check_basis(steps, op)
    nodes, weights = [], []
    with torch.no_grad(), Bar(runs * steps, "Hessian eigenvalue density", "hvp", progress) as bar:
        for r in range(runs):
            alpha, beta, b = lanczos.run(op.matvec, _start(op.dim, seed * 100003 + r, True, op.dtype, op.device),
                                         steps, step_done=bar.update)
            if not math.isfinite(b):
                _not_finite("the eigenvalue density")
                return Density(np.full((runs, steps), np.nan), np.full((runs, steps), np.nan), op.dim)
            values, _, first = lanczos.ritz(alpha, beta, b)
            pad = steps - len(alpha)   # an exhausted Krylov space: fewer nodes, padded with zero weight
            nodes.append(np.pad(values.numpy(), (0, pad), mode="edge"))
            weights.append(np.pad(first.square().numpy(), (0, pad)))
    return Density(np.stack(nodes), np.stack(weights), op.dim)


def loss_value(model: nn.Module, data, targets=None, loss=None, *, batch_size: int | None = None) -> Estimate:
    """The loss over the data (exact: se 0)."""
    op = HessianOperator(module_of(model), data, targets, loss, batch_size=batch_size)
    if not checks.parameters_finite(model):
        return checks.not_computed()
    op.check()
    return exact(op.loss())
