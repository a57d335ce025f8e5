"""Explicit smoothness regularization, L_reg = L + lambda * S (paper eq. 15), batched over models.

During training S is the stochastic variant on the current minibatch, as in the original code:
  gradient_norm           mean over the batch points of ||grad_x f||           (eq. 4 on the batch)
  gradient_norm_squared   mean over the batch points of ||grad_x f||^2
  function_path_length    sum over segments pairing the i-th point of the batch's first half with
                          the i-th of its second half, of the sampled TV of f on 10 points (eq. 10)
  gradient_path_length    the same with the TV of grad_x f (eq. 11)
  weights_product         exact WP of the network (eq. 13)
  path_norm               exact path norm, WP generalized to any depth (measures.path_norms)
  minibatch_gradient_norm ||grad_theta L_b||^2, the squared norm of the parameter gradient of the
                          batch MSE; over the batches of an epoch its mean is the implicit regularizer
                          of Smith et al. (2021), here made explicit (gradients by double backward)
The path lengths are summed (not averaged) over the segments, as the original code did; the
paper's coefficients (FPL 1e-4, GPL 1e-5) refer to that scale. Parameter gradients of S come from
autograd through the closed-form input gradient (double backpropagation).
"""
from __future__ import annotations

import torch

from . import registry
from .measures import path_norms, segment_points, tv_of_gradients, tv_of_values, weights_products
from .models import MLPStack, forward, input_gradient

REGULARIZERS = ("none", *(m.regularizer for m in registry.REGISTRY if m.regularizer))
PATH_LENGTH = ("function_path_length", "gradient_path_length")
SEGMENT_POINTS = 10


def default_lr(regularizer: str) -> float:
    """0.01, or 0.1 for the path-length regularizers (paper sec. 4.3)."""
    return 0.1 if regularizer in PATH_LENGTH else 0.01


def check(regularizer: str) -> str:
    """regularizer if it is known; a ValueError listing the known ones otherwise."""
    if regularizer not in REGULARIZERS:
        raise ValueError(f"unknown regularizer {regularizer!r}; choose one of: {', '.join(REGULARIZERS)}")
    return regularizer


def _half_pairs(xb: torch.Tensor, valid: torch.Tensor):
    """End points (a, b) [M, B//2, d] pairing valid point i with valid point i + c//2, and a pair mask.

    c is each model's number of valid points in the batch (valid points come first).
    """
    m, B, _ = xb.shape
    half = valid.sum(1) // 2                                    # [M]
    i = torch.arange(B // 2, device=xb.device)[None, :]
    pair_ok = i < half[:, None]
    j = (i + half[:, None]).clamp(max=B - 1)
    a = xb[:, : B // 2]
    b = xb.gather(1, j[..., None].expand(-1, -1, xb.shape[2]))
    return a, b, pair_ok


def batch_measure(p: MLPStack, regularizer: str, xb: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The stochastic variant of S on the batch xb [M, B, d] (valid [M, B]), differentiable. [M]."""
    if regularizer == "weights_product":
        return weights_products(p)
    if regularizer == "path_norm":
        return path_norms(p)
    if regularizer in ("gradient_norm", "gradient_norm_squared"):
        g = input_gradient(p, xb).norm(dim=-1)                  # [M, B]
        if regularizer == "gradient_norm_squared":
            g = g.square()
        return (g * valid).sum(1) / valid.sum(1)
    if regularizer in PATH_LENGTH:
        a, b, ok = _half_pairs(xb, valid)
        pts = segment_points(a, b, SEGMENT_POINTS)              # [M, B/2, 10, d]
        m, s, k, d = pts.shape
        flat = pts.reshape(m, s * k, d)
        if regularizer == "function_path_length":
            tv = tv_of_values(forward(p, flat).reshape(m, s, k))
        else:
            tv = tv_of_gradients(input_gradient(p, flat).reshape(m, s, k, d))
        return (tv * ok).sum(1)
    raise ValueError(f"no batch variant for regularizer {regularizer!r}")


def regularized_loss(p: MLPStack, regularizer: str, lam: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
                     valid: torch.Tensor):
    """Per-model objective L + lam * S on the batch (eq. 15), and the plain batch MSE L (eq. 2). [M] each."""
    def batch_mse(q):
        err = torch.where(valid, forward(q, xb) - yb, 0.0)
        return err.square().sum(1) / valid.sum(1), err

    mse, err = batch_mse(p)
    if regularizer == "minibatch_gradient_norm":
        return mse + lam * parameter_gradient_sq_norms(p, lambda q: batch_mse(q)[0]), err
    return mse + lam * batch_measure(p, regularizer, xb, valid), err


def parameter_gradient_sq_norms(p: MLPStack, losses) -> torch.Tensor:
    """||grad_theta L_m||^2 per model, for losses(q) -> [M] the per-model losses of a stack q. [M].

    Differentiable in p (double backward) when p's tensors require grad; otherwise just its value.
    """
    q = p if all(t.requires_grad for t in p.tensors()) else p.as_leaves()
    with torch.enable_grad():
        grads = torch.autograd.grad(losses(q).sum(), q.tensors(), create_graph=q is p)
    return sum(g.square().flatten(1).sum(1) for g in grads)


def regularized_grads(p: MLPStack, regularizer: str, lam: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
                      valid: torch.Tensor):
    """Every model's gradient of L + lam * S on its batch (in p.tensors() order), and the batch errors [M, B]."""
    q = p.as_leaves()
    with torch.enable_grad():
        obj, err = regularized_loss(q, regularizer, lam, xb, yb, valid)
        grads = torch.autograd.grad(obj.sum(), q.tensors())  # models are independent: sum gives each its own
    return list(grads), err.detach()
