"""The training losses, per example and batched over M models, and the interpolation rule each one stops on.

  mse             eq. 2 of Volhejn & Lampert: (f(x) - y)^2 for one output and targets y = +-1 (the paper's); with
                  K > 1 outputs and integer class labels, the sum over the outputs of the squared error against the
                  one-hot target, sum_k (f_k(x) - [k = y])^2
  cross_entropy   -log softmax(f(x))_y for K >= 2 outputs and integer class labels (stored as floats)

Outputs are [M, n] (one output) or [M, n, K]; targets y are [M, n] (the +-1 targets of a binary task, or class
indices 0..K-1 held exactly as floats, as the trainer keeps every target in one float tensor).

The interpolation rule (when a model has fit its training set; the trainer stops on it and the tables count a model
as converged by it): with mse, the mean loss of the epoch's steps is below the threshold (the paper's rule, 1e-5);
with cross_entropy, whose loss reaches 0 only in the limit, every training point of the epoch was classified
correctly (its true class has the largest output) and the mean loss of the epoch is below the threshold
(default 1e-3, DEFAULT_THRESHOLD). Both read the running values of the epoch's minibatch steps, as Keras logs them.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from smoothness import paper

LOSSES = ("mse", "cross_entropy")
DEFAULT_THRESHOLD = {"mse": paper.THRESHOLD, "cross_entropy": 1e-3}


def check(loss: str) -> str:
    """loss if it is a known loss; a ValueError listing them otherwise."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of: {', '.join(LOSSES)}")
    return loss


def default_threshold(loss: str) -> float:
    """The loss threshold of the interpolation rule when none is given (module docstring)."""
    return DEFAULT_THRESHOLD[check(loss)]


def check_outputs(loss: str, outputs: int) -> None:
    """A ValueError when a loss does not fit a model's number of outputs."""
    if loss == "cross_entropy" and outputs < 2:
        raise ValueError("cross_entropy needs a task of K >= 2 classes, one output each (classes: [3, 8], or all); "
                         "a pair task has one output with ±1 targets and trains with mse")


def measure_targets(y: torch.Tensor, outputs: int) -> torch.Tensor:
    """The targets as the curvature measures take them: for K > 1 outputs the class indices, held here as floats,
    as integers (the cross-entropy's classes, or the mse's one-hot targets); for one output y as it is."""
    return y.long() if outputs > 1 else y


def per_example(out: torch.Tensor, y: torch.Tensor, loss: str = "mse") -> torch.Tensor:
    """The loss of every example: out [M, n] or [M, n, K], y [M, n]. [M, n]."""
    if loss == "mse":
        if out.dim() == y.dim():
            return (out - y).square()
        onehot = F.one_hot(y.long().clamp(0, out.shape[-1] - 1), out.shape[-1]).to(out.dtype)
        return (out - onehot).square().sum(-1)
    if loss == "cross_entropy":
        logp = torch.log_softmax(out, dim=-1)
        return -logp.gather(-1, y.long()[..., None])[..., 0]
    raise ValueError(f"unknown loss {loss!r}")


def misclassified(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Whether each example is classified wrongly: for one output by its sign against y = +-1, for K outputs by the
    largest output against the class y. [M, n] bool."""
    if out.dim() == y.dim():
        return (out * y) <= 0
    return out.argmax(-1) != y.long()


def mean_loss(out: torch.Tensor, y: torch.Tensor, loss: str = "mse", valid: torch.Tensor | None = None):
    """The mean loss per model over its valid examples [M], and the per-example losses [M, n] (0 where not valid)."""
    per = per_example(out, y, loss)
    if valid is None:
        return per.mean(1), per
    per = torch.where(valid, per, 0.0)
    return per.sum(1) / valid.sum(1), per


@torch.no_grad()
def dataset_loss(values, x: torch.Tensor, y: torch.Tensor, loss: str = "mse", chunk: int = 4096) -> torch.Tensor:
    """The mean loss (eq. 2 for mse) of each of M models over all n points, evaluated in chunks of points with the
    sum in float64: values(xb) gives the outputs [M, b] or [M, b, K] of points xb, the chunks of x along the points'
    axis (x [n, ...] shared, or [M, n, ...]); y [n] or [M, n]. [M], float32."""
    axis, n = y.dim() - 1, y.shape[-1]
    total = None
    for i in range(0, n, chunk):
        out = values(x.narrow(axis, i, min(chunk, n - i)))
        yb = y[..., i:i + chunk].expand(out.shape[:2])
        part = per_example(out, yb, loss).double().sum(-1)
        total = part if total is None else total + part
    return (total / n).float()
