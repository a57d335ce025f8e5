"""Curvature of the training loss of any model (PyTorch module) with any loss: sharpness (the top Hessian
eigenvalue) and the top k, the Hessian trace, and the eigenvalue density, by Hessian-vector products through
torch.func (forward-over-reverse: the jvp of the gradient), over a tensor pair (x, y) or a DataLoader. Each is a
thin use of the operators and estimators of operators.py (the Hessian), spectrum.py (Lanczos: eigenvalues with
error bounds, the density) and trace.py (Hutchinson), whose public names this module also exports, with those of
gaussnewton.py (the GGN, the Fisher, exact or sampled, the empirical Fisher): `curvature.operator('ggn', model, x,
y)`, `curvature.eigenpairs(op, k=3, which='smallest')`, `curvature.hutchpp(op, 99)`, `curvature.diagonal(op)`.

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

import numpy as np
from torch import nn

from smoothness.errors import MeasureError
from smoothness.measures import checks, inputspace, paramspace, spectrum, stream
from smoothness.measures.estimate import Estimate, exact
from smoothness.measures.gaussnewton import (
    KINDS,
    EmpiricalFisherOperator,
    FisherOperator,
    GGNOperator,
    SampledFisherOperator,
    operator,
)
from smoothness.measures.losses import LOSSES, resolve_loss
from smoothness.measures.operators import CurvatureOperator, HessianOperator, MatrixOperator, checked
from smoothness.measures.spectrum import Density, Eigenvalue, density, eigenpairs
from smoothness.measures.trace import (  # DEFAULT_PROBES: Hutchinson probe vectors
    DEFAULT_PROBES,
    Diagonal,
    diagonal,
    exact_diagonal,
    hutchinson,
    hutchpp,
    trace,
    xtrace,
)
from smoothness.models import MLPStack, ReLUMLP
from smoothness.runtime import precision

__all__ = ["DEFAULT_PROBES", "DEFAULT_RUNS", "DEFAULT_STEPS", "DEFAULT_TOL", "KINDS", "LOSSES", "CurvatureOperator",
           "Density", "Diagonal", "Eigenvalue", "EmpiricalFisherOperator", "FisherOperator", "GGNOperator",
           "HessianOperator", "MatrixOperator", "SampledFisherOperator", "density", "diagonal", "eigenpairs",
           "eigenvalue_density", "exact_diagonal", "hessian_trace", "hutchinson", "hutchpp", "loss_value", "module_of",
           "operator", "resolve_loss", "sharpness", "top_eigenvalues", "trace", "xtrace"]

DEFAULT_STEPS = spectrum.DEFAULT_STEPS    # Lanczos steps at most (top eigenvalues: until converged; density: these)
DEFAULT_TOL = spectrum.DEFAULT_TOL        # top eigenvalues: stop when every residual is below tol x the largest
DEFAULT_RUNS = spectrum.DEFAULT_RUNS      # independent stochastic Lanczos quadrature runs of the density


def _fast(model, data, targets, loss, fast: bool):
    """The ReLU stack of model where the batched fast path applies (float targets [n] for points [n, d]), else
    None."""
    p = inputspace.relu_stack(module_of(model))
    if (p is None or not fast or loss not in (None, "mse") or stream.is_stream(data) or targets is None
            or not stream.as_tensor(targets).is_floating_point() or stream.as_tensor(targets).dim() != 1
            or stream.as_tensor(data).dim() != 2 or not stream.as_tensor(data).is_floating_point()
            or stream.as_tensor(data).shape[0] != stream.as_tensor(targets).shape[0]):
        return None
    return p


def module_of(model) -> nn.Module:
    """model as an nn.Module (an MLPStack of one model as its ReLUMLP)."""
    if isinstance(model, MLPStack):
        if model.n_models != 1:
            raise MeasureError(f"a stack of {model.n_models} models: these functions measure one model (the batched "
                             "smoothness.measures.paramspace measures a stack at once)")
        return ReLUMLP.from_stack(model)
    return model


@precision.strict_fp32()
def top_eigenvalues(model: nn.Module, data, targets=None, loss=None, k: int = 1, *, steps: int = DEFAULT_STEPS,
                    tol: float = DEFAULT_TOL, seed: int = 0, batch_size: int | None = None,
                    progress=None) -> list[Eigenvalue]:
    """The k largest eigenvalues of the Hessian of the loss, largest first, by the Lanczos iteration (full
    reorthogonalization) from a seeded Gaussian start, until each residual is below tol x the largest |Ritz value|
    or after `steps` Hessian-vector products (each a pass over the data): spectrum.eigenpairs on the
    HessianOperator. Each is an Eigenvalue with its residual and error bound (see spectrum.py)."""
    if k < 1:
        raise MeasureError(f"k must be >= 1; got {k}")
    op = HessianOperator(module_of(model), data, targets, loss, batch_size=batch_size)
    if not checks.parameters_finite(model):
        return [Eigenvalue(math.nan, math.nan, 0) for _ in range(k)]
    return eigenpairs(op, k, "largest", steps=steps, tol=tol, seed=seed, progress=progress,
                      desc="Hessian eigenvalues")


def sharpness(model: nn.Module, data, targets=None, loss=None, *, steps: int = DEFAULT_STEPS,
              tol: float = DEFAULT_TOL, seed: int = 0, fast: bool = True, batch_size: int | None = None,
              progress=None, iters: int | None = None) -> Eigenvalue:
    """The largest eigenvalue of the Hessian of the loss (top_eigenvalues with k = 1). A ReLU MLP with the mse loss
    on tensors takes paramspace.stack_sharpness (power iteration) unless fast=False; its residual is then NaN and n the
    power iterations. iters: the earlier name of `steps`, accepted with a DeprecationWarning until the next minor
    version."""
    if iters is not None:
        warnings.warn("curvature.sharpness(iters=...) is now curvature.sharpness(steps=...); iters will be removed "
                      "in the next minor version", DeprecationWarning, stacklevel=2)
        steps = iters
    data, targets = checked(data, targets)
    if not checks.parameters_finite(model):
        return Eigenvalue(math.nan, math.nan, 0)
    p = _fast(model, data, targets, loss, fast)
    if p is not None:
        s = paramspace.stack_sharpness(p, data, targets, iters=steps, tol=tol, seed=seed)
        return Eigenvalue(float(s.value[0]), float("nan"), int(s.iterations[0]))
    return top_eigenvalues(model, data, targets, loss, 1, steps=steps, tol=tol, seed=seed, batch_size=batch_size,
                           progress=progress)[0]


@precision.strict_fp32()
def hessian_trace(model: nn.Module, data, targets=None, loss=None, *, probes: int = DEFAULT_PROBES, seed: int = 0,
                  fast: bool = True, batch_size: int | None = None, progress=None) -> Estimate:
    """Hutchinson's estimate of tr H: the mean of z . H z over `probes` Rademacher vectors z, with its standard error
    over the probes (n = probes). A ReLU MLP with the mse loss on tensors takes paramspace.stack_hessian_trace (other
    probe vectors, the same estimator) unless fast=False."""
    if probes < 1:
        raise MeasureError(f"probes must be >= 1; got {probes}")
    data, targets = checked(data, targets)
    if not checks.parameters_finite(model):
        return checks.not_computed()
    p = _fast(model, data, targets, loss, fast)
    if p is not None:
        value, se = paramspace.stack_hessian_trace(p, data, targets, probes=probes, seed=seed)
        return Estimate(float(value[0]), float(se[0]), probes)
    op = HessianOperator(module_of(model), data, targets, loss, batch_size=batch_size)
    return hutchinson(op, probes, seed=seed, progress=progress, desc="Hessian trace")


@precision.strict_fp32()
def eigenvalue_density(model: nn.Module, data, targets=None, loss=None, *, runs: int = DEFAULT_RUNS,
                       steps: int = DEFAULT_STEPS, seed: int = 0, batch_size: int | None = None,
                       progress=None) -> Density:
    """The Hessian's eigenvalue density by stochastic Lanczos quadrature: `runs` Lanczos runs of `steps` steps (at
    most the number of parameters) from Rademacher vectors; see Density."""
    if runs < 1:
        raise MeasureError(f"runs must be >= 1; got {runs}")
    op = HessianOperator(module_of(model), data, targets, loss, batch_size=batch_size)
    if not checks.parameters_finite(model):
        steps = min(steps, op.dim)
        return Density(np.full((runs, steps), np.nan), np.full((runs, steps), np.nan), op.dim)
    return density(op, runs=runs, steps=steps, seed=seed, progress=progress, desc="Hessian eigenvalue density")


def loss_value(model: nn.Module, data, targets=None, loss=None, *, batch_size: int | None = None) -> Estimate:
    """The loss over the data (exact: se 0)."""
    op = HessianOperator(module_of(model), data, targets, loss, batch_size=batch_size)
    if not checks.parameters_finite(model):
        return checks.not_computed()
    op.check()
    return exact(op.loss())
