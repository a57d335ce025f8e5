"""What the public measures check of what they are given, in one place, before any work: the points and targets
(dense tensors of real numbers, all finite), the model's output (one tensor with a row per point), its failure on
the data (a shape or a dtype it does not take), its parameters (finite, or a warning: its measures are then NaN),
and the memory the work asked for needs. Every failure is one MeasureError that names the problem.

The measures' policy (docs/measure-your-model.md): bad input is an error before any work; a model with non-finite
parameters gets a warning that names them, and NaN for every measure, without computing; a value that cannot be
computed from valid input (the Hessian-vector product overflowing) is NaN with a warning saying why.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from smoothness.errors import MeasureError, MeasureTypeError, SmoothnessError, first_line
from smoothness.measures.estimate import Estimate
from smoothness.models import MLPStack
from smoothness.runtime import devices


def values(t: torch.Tensor, what: str) -> torch.Tensor:
    """t itself, checked: a dense tensor of real numbers (integers or floats), all of them finite."""
    if t.layout != torch.strided:
        raise MeasureTypeError(f"a sparse tensor ({str(t.layout).replace('torch.', '')}) for {what}: pass it dense "
                               "(.to_dense())")
    if t.is_complex():
        raise MeasureTypeError(f"complex numbers ({str(t.dtype).replace('torch.', '')}) in {what}: the measures are "
                               "of real functions of real numbers")
    if t.dtype == torch.bool:
        raise MeasureTypeError(f"booleans in {what}: pass numbers (0/1 as integers or floats)")
    if t.is_floating_point():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            nan = int(torch.isnan(t).sum())
            counts = ", ".join(s for s in (f"{nan:,} NaN" if nan else "",
                                           f"{int(bad.sum()) - nan:,} infinite" if int(bad.sum()) > nan else "") if s)
            row = int(bad.reshape(t.shape[0], -1).any(1).nonzero()[0, 0]) if t.dim() else 0
            raise MeasureError(f"non-finite values in {what} ({counts}, the first in row {row}): no measure of f "
                               "there is a number; drop or repair those rows")
    return t


def points(t: torch.Tensor, what: str = "x") -> torch.Tensor:
    """t checked as the points of the input-space measures: values() of at least two dimensions [n, ...], floating
    point (they move along segments and differentiate along them)."""
    values(t, what)
    if t.dim() == 1 and t.shape[0] == 0:
        raise MeasureError("the data holds no points")
    if t.dim() < 2:
        raise MeasureError(f"{what} has shape {tuple(t.shape)}: the input-space measures take points [n, ...], one "
                           "row per point (x[None] is one point, x[:, None] is n points of dimension 1; a list of "
                           "tensors is read as a list of batches, and torch.stack makes points of them)")
    if not t.is_floating_point():
        raise MeasureError(f"{what} holds integers ({str(t.dtype).replace('torch.', '')}): the input-space measures "
                           "move along segments between points and differentiate along them, which needs "
                           "floating-point inputs; convert numbers with .float(); token ids (the input of an "
                           "Embedding) have no input-space measures, only the loss and the curvature")
    return t


def parameters_finite(model, what: str = "the model") -> bool:
    """Whether every floating parameter and buffer of model (an nn.Module or an MLPStack; anything else counts as
    finite) is finite; if not, a warning naming them: its measures are NaN, and are not computed."""
    if isinstance(model, MLPStack):
        named = [(f"weights[{i}]", w) for i, w in enumerate(model.weights)]
        named += [(f"biases[{i}]", b) for i, b in enumerate(model.biases)]
    elif isinstance(model, nn.Module):
        named = [*model.named_parameters(), *model.named_buffers()]
    else:
        return True
    bad = []
    for name, t in named:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            nan = int(torch.isnan(t).sum())
            inf = int((~torch.isfinite(t)).sum()) - nan
            bad.append(f"{name}: " + ", ".join(s for s in (f"{nan:,} NaN" if nan else "",
                                                          f"{inf:,} infinite" if inf else "") if s))
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        warnings.warn(f"{what} has non-finite parameters ({'; '.join(bad[:3])}{more}): its measures are NaN, not "
                      "computed", stacklevel=3)
    return not bad


def call(model, x: torch.Tensor, what: str = "the model"):
    """model(x) for a first probe of the data: a failure (a shape or a dtype the model does not take) becomes a
    MeasureError that names the points and keeps the model's own first line."""
    try:
        return model(x)
    except SmoothnessError:
        raise
    except Exception as e:   # the model's own error on these points: one line, the original as its cause
        hint = ("; it is in training mode: call model.eval() before measuring"
                if isinstance(model, nn.Module) and model.training and "training" in str(e) else "")
        raise MeasureError(f"{what} fails on points of shape {list(x.shape)} ({str(x.dtype).replace('torch.', '')})"
                           f": {type(e).__name__}: {first_line(e, 300)}{hint}") from e


def output(out, n: int, what: str = "the model") -> torch.Tensor:
    """out, the model's output for n points, checked: a tensor with one row per point ([n] or [n, ...])."""
    if isinstance(out, dict):
        key = next(iter(out), "logits")
        raise MeasureTypeError(f"{what} returns a dict ({', '.join(map(str, list(out)[:4]))}), not a tensor: the "
                               "measures need one output tensor with a row per point; measure a wrapper that returns "
                               f"the output to measure, e.g. lambda x: model(x)[{key!r}]")
    if isinstance(out, (tuple, list)):
        raise MeasureTypeError(f"{what} returns a {type(out).__name__} of {len(out)} items, not a tensor: the "
                               "measures need one output tensor with a row per point; measure a wrapper that returns "
                               "the output to measure, e.g. lambda x: model(x)[0]")
    if not torch.is_tensor(out):
        raise MeasureTypeError(f"{what} returns a {type(out).__name__}, not a tensor with a row per point")
    if out.dim() == 0:
        raise MeasureError(f"{what} returns a 0-d tensor for {n} point(s), one number for the whole batch (a loss or a "
                           "sum?): the measures need one output per point, [n] or [n, K]")
    if out.shape[0] != n:
        raise MeasureError(f"{what} maps {n} point(s) to an output of shape {tuple(out.shape)}: the measures need one "
                           "row per point, [n] or [n, K]")
    return out


def gigabytes(n: int) -> str:
    return f"{n / 1e9:.3g} GB"


def fits(nbytes: int, what: str, advice: str, device) -> None:
    """A MeasureError, before any work, if `what` needs more memory than the device has to spare
    (runtime.devices.memory_budget: 80% of a GPU's free memory, half of the CPU's available memory)."""
    device = torch.device(device)
    budget = devices.memory_budget(device if device.type == "cuda" else "cpu")
    if nbytes > budget:
        raise MeasureError(f"{what} need {gigabytes(nbytes)}, more than the {gigabytes(budget)} of memory there is "
                           f"to spare: {advice}")


def not_computed() -> Estimate:
    """The Estimate of a measure that was not computed (its model's parameters are not finite): NaN, no samples."""
    return Estimate(math.nan, math.nan, 0)


def not_finite(what: str) -> None:
    """The warning of a value that is NaN because a matrix-vector product was not finite."""
    warnings.warn(f"the matrix-vector product is not finite (NaN or Inf) at these parameters and points: an "
                  f"overflow, or NaN from the model or the loss; {what} is NaN", stacklevel=3)
