"""The losses of the curvature measures: 'mse' (eq. 2 of Volhejn & Lampert) and 'cross_entropy' by name, or any
callable loss(outputs, targets) -> scalar batch mean; the default for given outputs and targets; and the check
that the targets fit a named loss (as many targets per point as outputs, or labels 0 to K - 1 read as
one-hot targets, for the mse; labels 0 to K - 1, or probabilities [n, K], for the cross-entropy), which the
curvature measures make on every batch."""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from smoothness.errors import MeasureError, MeasureTypeError

__all__ = ["LOSSES", "check_targets", "describe", "one_hot_targets", "resolve_loss"]


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eq. 2: mean over the points of (f(x) - y)^2 (summed over outputs when there are several; each point's
    outputs and targets are compared in order, so [n] and [n, 1] are alike). Integer class labels y [n] of K > 1
    outputs are read as one-hot targets, sum_k (f_k(x) - [k = y])^2, as a grid's `loss: mse` of classes trains."""
    n = out.shape[0]
    if _labels_of_outputs(y, tuple(out.shape[1:])):
        y = F.one_hot(y.long(), out.shape[1])
    if y.numel() != out.numel():   # the callable given as such, past check_targets: never broadcast
        check_targets(_mse, tuple(out.shape[1:]), y)
    return (out.reshape(n, -1) - y.to(out.dtype).reshape(n, -1)).square().sum(1).mean()


def _labels_of_outputs(y: torch.Tensor, row: tuple[int, ...]) -> bool:
    """Whether y holds one integer class label per point for outputs [n, K] of K > 1 classes (row: (K,))."""
    return len(row) == 1 and row[0] > 1 and not y.is_floating_point() and not y.is_complex() and y.dim() == 1


LOSSES = {"mse": _mse, "cross_entropy": F.cross_entropy}


def resolve_loss(loss, out: torch.Tensor, y: torch.Tensor):
    """The loss callable named or given (see the module docstring)."""
    if loss is None:
        classes = out.dim() == 2 and out.shape[1] > 1 and not y.is_floating_point()
        return F.cross_entropy if classes else _mse
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise MeasureError(f"unknown loss {loss!r}: name one of {', '.join(LOSSES)} or pass a callable")
        return LOSSES[loss]
    if not callable(loss):
        raise MeasureTypeError(f"loss must be a name or a callable loss(outputs, targets); got {type(loss).__name__}")
    return loss


def one_hot_targets(loss, row: tuple[int, ...], y: torch.Tensor) -> bool:
    """Whether the loss is the named mse and y holds integer class labels [n] of outputs [n, *row] with K > 1
    classes, which it reads as one-hot targets."""
    return loss is _mse and _labels_of_outputs(y, tuple(row))


def describe(spec, loss, one_hot: bool = False) -> str:
    """The loss in words, for a record: its name, and for the default (spec None) why it was chosen; one_hot: the
    mse reads the targets as one-hot (see one_hot_targets)."""
    if spec is None:
        return ("cross_entropy (the default for integer targets and K > 1 outputs)" if loss is F.cross_entropy
                else "mse (the default for float targets or one output: eq. 2, the mean of (f(x) - y)^2)")
    if isinstance(spec, str):
        return spec + (" (against one-hot targets: integer class labels)" if one_hot else "")
    return getattr(spec, "__name__", type(spec).__name__)


def check_targets(loss, row: tuple[int, ...], y: torch.Tensor, chosen: bool = False) -> None:
    """A MeasureError if the targets y of a batch do not fit the named loss (`loss`, from LOSSES) for outputs of
    shape [n, *row]; chosen: the loss is the default's choice (said in the message)."""
    why = " (the default for these targets and outputs)" if chosen else ""
    k = math.prod(row)
    if loss is _mse:
        if _labels_of_outputs(y, tuple(row)):
            _check_labels(y, k, "the mse loss (against one-hot targets)")
            return
        per = math.prod(y.shape[1:])
        if per != k:
            raise MeasureError(f"the mse loss{why} compares each point's {k} output(s) with as many targets, but y "
                               f"has shape {tuple(y.shape)}: give y [n" + (f", {k}]" if k > 1 else "]")
                               + (", or integer class labels [n]" if len(row) == 1 and k > 1 else "")
                               + ", or pick one output of the model")
    elif loss is F.cross_entropy:
        if not row:
            raise MeasureError(f"the cross-entropy{why} needs class scores [n, K]; the model gives one number per "
                               "point")
        if y.is_floating_point():
            if tuple(y.shape[1:]) != row:
                raise MeasureError(f"the cross-entropy{why} reads float targets as class probabilities [n, "
                                   f"{', '.join(map(str, row))}], and y has shape {tuple(y.shape)}; class labels are "
                                   "integers")
        else:
            if tuple(y.shape[1:]) != row[1:]:
                raise MeasureError(f"the cross-entropy{why} needs one class label per point ([n]); y has shape "
                                   f"{tuple(y.shape)}")
            _check_labels(y, row[0], f"the cross-entropy{why}")


def _check_labels(y: torch.Tensor, k: int, of: str) -> None:
    """A MeasureError when the integer labels y are not 0 to k - 1 (the labels of `of`)."""
    if y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= k:
            raise MeasureError(f"y holds class labels from {lo} to {hi}, but the model has {k} outputs: the labels "
                               f"of {of} are 0 to {k - 1}")
