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
paper's coefficients (FPL 1e-4, GPL 1e-5) refer to that scale. The number of points per segment is a
setting (`points`, default 10 as in the original code's final version; 100 in an earlier one).

Two-layer ReLU nets (the paper's) take a closed form: the data term's gradient is backpropagated by hand
(models.parameter_grads), and only S is differentiated by autograd, from the batch's own pre-activations.
Along a segment between two batch points the pre-activations are affine in t (measures.two_layer_segment_tvs),
so FPL and GPL need no forward pass at the segment points, their gradient with respect to W1 flows through the
end points' pre-activations into the data term's weight-gradient matmul, GPL's gradient differences are
norms under the Gram matrix W1 W1^T (so its cost does not grow with the points per segment), and WP is
differentiated directly. Other depths, and the remaining regularizers, use autograd through the closed-form
input gradient (double backpropagation). Both give the same objective (tested against each other).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from smoothness import paper
from smoothness.measures import registry
from smoothness.measures.inputspace import (
    path_norms, segment_points, tv_of_gradients, tv_of_values, two_layer_segment_tvs, weights_products)
from smoothness.models import MLPStack, forward, input_gradient, parameter_grads

REGULARIZERS = ("none", *(m.regularizer for m in registry.REGISTRY if m.regularizer))
PATH_LENGTH = ("function_path_length", "gradient_path_length")
SEGMENT_POINTS = paper.PENALTY_POINTS   # points per segment of the path-length penalties (`penalty_points`)
PAPER_LAMBDAS = paper.LAMBDAS   # the coefficients of the paper's Table 2
# What one training step with each penalty costs, in plain SGD steps (784-256-1 net, batch 64, one model, 10 points
# per penalty segment; `smoothness bench --regularizers 1`, docs/performance.md), and per further point per segment.
# Used to order work (distributed.expected_steps), not to decide anything about a model.
STEP_COST = {"none": 1.0, "gradient_norm": 2.4, "gradient_norm_squared": 2.4, "weights_product": 1.5,
             "path_norm": 2.0, "function_path_length": 2.0, "gradient_path_length": 4.6,
             "minibatch_gradient_norm": 6.0}
STEP_COST_PER_POINT = {"function_path_length": 0.035, "gradient_path_length": 0.15}


def step_cost(regularizer: str, points: int = SEGMENT_POINTS) -> float:
    """The cost of a step with this penalty in plain SGD steps (STEP_COST)."""
    return STEP_COST.get(regularizer, 1.0) + STEP_COST_PER_POINT.get(regularizer, 0.0) * (points - SEGMENT_POINTS)


# The regularizers with a closed form for two-layer nets (_two_layer_grads).
TWO_LAYER = ("gradient_norm", "gradient_norm_squared", "function_path_length", "gradient_path_length",
             "weights_product")


def default_lr(regularizer: str) -> float:
    """The paper's learning rate: 0.01, or 0.1 for the path-length regularizers (sec. 4.3)."""
    return paper.LR_PATH_LENGTH if regularizer in PATH_LENGTH else paper.LR


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


def check_points(points: int) -> int:
    """points per segment of a path-length penalty if it is an integer >= 2; a ValueError otherwise."""
    if isinstance(points, bool) or int(points) != points or points < 2:
        raise ValueError(f"points per segment of a path-length penalty must be an integer >= 2, got {points!r}")
    return int(points)


def batch_measure(p: MLPStack, regularizer: str, xb: torch.Tensor, valid: torch.Tensor,
                  points: int = SEGMENT_POINTS) -> torch.Tensor:
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
        pts = segment_points(a, b, points)                      # [M, B/2, P, d]
        m, s, k, d = pts.shape
        flat = pts.reshape(m, s * k, d)
        if regularizer == "function_path_length":
            tv = tv_of_values(forward(p, flat).reshape(m, s, k))
        else:
            tv = tv_of_gradients(input_gradient(p, flat).reshape(m, s, k, d))
        return (tv * ok).sum(1)
    raise ValueError(f"no batch variant for regularizer {regularizer!r}")


def regularized_loss(p: MLPStack, regularizer: str, lam: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
                     valid: torch.Tensor, points: int = SEGMENT_POINTS):
    """Per-model objective L + lam * S on the batch (eq. 15), and the plain batch MSE L (eq. 2). [M] each."""
    def batch_mse(q):
        err = torch.where(valid, forward(q, xb) - yb, 0.0)
        return err.square().sum(1) / valid.sum(1), err

    mse, err = batch_mse(p)
    if regularizer == "minibatch_gradient_norm":
        return mse + lam * parameter_gradient_sq_norms(p, lambda q: batch_mse(q)[0]), err
    return mse + lam * batch_measure(p, regularizer, xb, valid, points), err


def parameter_gradient_sq_norms(p: MLPStack, losses) -> torch.Tensor:
    """||grad_theta L_m||^2 per model, for losses(q) -> [M] the per-model losses of a stack q. [M].

    Differentiable in p (double backward) when p's tensors require grad; otherwise just its value.
    """
    q = p if all(t.requires_grad for t in p.tensors()) else p.as_leaves()
    with torch.enable_grad():
        grads = torch.autograd.grad(losses(q).sum(), q.tensors(), create_graph=q is p)
    return sum(g.square().flatten(1).sum(1) for g in grads)


def regularized_grads(p: MLPStack, regularizer: str, lam: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
                      valid: torch.Tensor, points: int = SEGMENT_POINTS):
    """Every model's gradient of L + lam * S on its batch (in p.tensors() order), and the batch errors [M, B]."""
    if p.depth == 1 and regularizer in TWO_LAYER:
        return _two_layer_grads(p, regularizer, lam, xb, yb, valid, points)
    q = p.as_leaves()
    with torch.enable_grad():
        obj, err = regularized_loss(q, regularizer, lam, xb, yb, valid, points)
        grads = torch.autograd.grad(obj.sum(), q.tensors())  # models are independent: sum gives each its own
    return list(grads), err.detach()


def _two_layer_grads(p: MLPStack, regularizer: str, lam: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
                     valid: torch.Tensor, points: int):
    """regularized_grads for two-layer nets in closed form (module docstring): the same objective, eq. 15."""
    out, acts, pres = forward(p, xb, cache=True)
    err = torch.where(valid, out - yb, 0.0)
    pen = penalty_grads(p, regularizer, lam, pres[0], valid, points)
    grads = parameter_grads(p, acts, pres, 2.0 * err / valid.sum(1).to(err.dtype)[:, None], dpre=[pen.dz])
    if pen.dW1 is not None:
        grads[0] = grads[0] + pen.dW1
    grads[1] = grads[1] + pen.dw2
    return grads, err


@dataclass
class PenaltyGrads:
    """The gradient of sum_m lam_m S_m(batch) of two-layer nets: with respect to the batch's first-layer
    pre-activations dz [M, B, h] (None unless S depends on them), W1 [M, h, d] (None unless S depends on it
    directly) and w2 [M, 1, h]. The bias gradients follow from dz (b1) or are 0."""
    dz: torch.Tensor | None
    dW1: torch.Tensor | None
    dw2: torch.Tensor


def penalty_grads(p: MLPStack, regularizer: str, lam: torch.Tensor, z: torch.Tensor, valid: torch.Tensor,
                  points: int = SEGMENT_POINTS) -> PenaltyGrads:
    """The gradient of lam * S for two-layer nets (p.depth == 1, regularizer in TWO_LAYER) from the batch's
    first-layer pre-activations z [M, B, h] (module docstring). The data term is not included."""
    W1 = p.weights[0].detach().requires_grad_(True)
    w2 = p.weights[1].detach().requires_grad_(True)
    if regularizer == "gradient_path_length":
        return _gpl_grads(W1.detach(), w2.detach(), lam, z, valid, points)
    zl = z.detach().requires_grad_(True)
    with torch.enable_grad():
        if regularizer == "weights_product":
            pen, wrt = weights_products(MLPStack([W1, w2], p.biases)), [W1, w2]
        elif regularizer == "function_path_length":
            za, zb, ok = _half_pairs(zl, valid)
            pen = (two_layer_segment_tvs(za, zb, w2[:, 0, :], None, points, ("fpl",))["fpl"] * ok).sum(1)
            wrt = [zl, w2]
        elif regularizer in ("gradient_norm", "gradient_norm_squared"):   # eq. 4, grad f(x) = W1^T (m(x) * w2)
            g = torch.bmm((z > 0).to(z.dtype) * w2, W1).norm(dim=-1)       # [M, B]
            if regularizer == "gradient_norm_squared":
                g = g.square()
            pen, wrt = (g * valid).sum(1) / valid.sum(1), [W1, w2]
        else:
            raise ValueError(f"no two-layer closed form for regularizer {regularizer!r}")
        d = dict(zip(wrt, torch.autograd.grad((lam * pen).sum(), wrt)))
    return PenaltyGrads(d.get(zl), d.get(W1), d[w2])


def _gpl_grads(W1: torch.Tensor, w2: torch.Tensor, lam: torch.Tensor, z: torch.Tensor, valid: torch.Tensor,
               points: int) -> PenaltyGrads:
    """GPL's penalty gradient by hand (eq. 11 on the batch's segments, measures.two_layer_segment_tvs):
    S = sum_r sqrt(q_r), q_r = du_r G du_r^T, G = W1 W1^T, du_r = (m_k - m_{k-1}) * w2 over the segments' steps r.
    Then dS/dG = du^T diag(c) du with c_r = 1 / (2 sqrt(q_r)), dS/dW1 = 2 (dS/dG) W1 (G is symmetric), and
    dS/d du_r = 2 c_r (du_r G), whose product du G the forward pass already holds: autograd would form G's two
    transposed products and du G's gradient again."""
    m, _, h = z.shape
    za, zb, ok = _half_pairs(z, valid)
    t = torch.linspace(0.0, 1.0, points, device=z.device, dtype=z.dtype)[:, None]
    zt = za[:, :, None, :] + t * (zb - za)[:, :, None, :]                       # [M, s, P, h]
    dm = (zt > 0).to(z.dtype).diff(dim=2).reshape(m, -1, h)                    # [M, s (P-1), h]
    du = dm * w2                                                                # w2 [M, 1, h]
    gram = torch.bmm(W1, W1.transpose(1, 2))
    du_g = torch.bmm(du, gram)
    q = (du_g * du).sum(-1)                                                     # [M, R]
    pos = q > 0
    root = torch.where(pos, q, 1.0).sqrt()
    weight = (lam[:, None] * ok.to(z.dtype)).repeat_interleave(points - 1, dim=1)   # lam_m for segment r's steps
    c = torch.where(pos, weight / (2.0 * root), 0.0)                            # [M, R]
    d_gram = torch.bmm((du * c[..., None]).transpose(1, 2), du)                 # [M, h, h], symmetric
    d_w2 = (2.0 * c[..., None] * du_g * dm).sum(1, keepdim=True)               # [M, 1, h]
    return PenaltyGrads(None, 2.0 * torch.bmm(d_gram, W1), d_w2)
