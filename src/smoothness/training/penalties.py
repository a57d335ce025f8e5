"""The minibatch variants of the measures that explicit regularization penalizes (eq. 15 on the batch), and the
closed forms of their gradients for two-layer nets. The regularizers' rows point here (regularizers.TABLE: batch and
grad), and training.regularizers trains on them.

Each variant is S on the current batch xb [M, B, d] (valid [M, B]: the points that belong to the batch, valid points
first) of a stack p of models of a family `fam` (models/family.py: its values and input gradients, differentiable in
the weights), as in the original code:
  gradient_norm           mean over the batch points of ||grad_x f||           (eq. 4 on the batch)
  gradient_norm_squared   mean over the batch points of ||grad_x f||^2
  function_path_length    sum over segments pairing the i-th point of the batch's first half with
                          the i-th of its second half, of the sampled TV of f on `points` points (eq. 10)
  gradient_path_length    the same with the TV of grad_x f (eq. 11)
  weights_product         exact WP of the network (eq. 13; two-layer MLPs)
  path_norm               exact path norm, WP generalized to any depth (MLPs)
  norm_product            the product of the weight tensors' Frobenius norms (any family; models/family.py)
  minibatch_gradient_norm ||grad_theta L_b||^2, the squared norm of the parameter gradient of the batch MSE;
                          over the batches of an epoch its mean is the implicit regularizer of Smith et al. (2021)
The path lengths are summed (not averaged) over the segments, as the original code did; the paper's coefficients
(FPL 1e-4, GPL 1e-5) refer to that scale.

Two-layer ReLU nets (the paper's) take a closed form of the penalty's gradient (penalty_grad_*): from the batch's own
first-layer pre-activations z, since along a segment between two batch points the pre-activations are affine in t
(inputspace.two_layer_segment_tvs). FPL's gradient flows through the end points' z; GPL's gradient differences are
the rows of du W1 for a sparse du (on a CPU; the Gram matrix W1 W1^T elsewhere), with the backward pass written out
by hand; GN's and WP's are taken by autograd of their own small graphs. The trainer adds them to the data term's
gradient (and, with plain SGD, folds them into its fused update). The forms agree with autograd of the variants
above (tested).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from smoothness.measures.inputspace import (
    path_norms,
    segment_points,
    tv_of_gradients,
    tv_of_outputs,
    two_layer_segment_tvs,
    weights_products,
)
from smoothness.models import MLPStack, losses


def half_pairs(xb: torch.Tensor, valid: torch.Tensor):
    """End points (a, b) [M, B//2, ...] pairing valid point i with valid point i + c//2, and a pair mask [M, B//2].

    c is each model's number of valid points in the batch (valid points come first); xb is [M, B, k] (inputs, or
    anything per point such as pre-activations)."""
    m, B, _ = xb.shape
    half = valid.sum(1) // 2                                    # [M]
    i = torch.arange(B // 2, device=xb.device)[None, :]
    pair_ok = i < half[:, None]
    j = (i + half[:, None]).clamp(max=B - 1)
    a = xb[:, : B // 2]
    b = xb.gather(1, j[..., None].expand(-1, -1, xb.shape[2]))
    return a, b, pair_ok


def _gradient_norms(fam, p, xb, valid, power: int) -> torch.Tensor:
    g = fam.input_grads(p, xb, create_graph=True).norm(dim=-1).pow(power)   # [M, B]
    return (g * valid).sum(1) / valid.sum(1)


def batch_gradient_norm(fam, p, xb, yb, valid, points, loss="mse") -> torch.Tensor:
    """GN on the batch (eq. 4 over its points). [M]."""
    return _gradient_norms(fam, p, xb, valid, 1)


def batch_gradient_norm_squared(fam, p, xb, yb, valid, points, loss="mse") -> torch.Tensor:
    """GN² on the batch. [M]."""
    return _gradient_norms(fam, p, xb, valid, 2)


def _path_length(fam, p, xb, valid, points: int, of_gradient: bool) -> torch.Tensor:
    a, b, ok = half_pairs(xb, valid)
    pts = segment_points(a, b, points)                          # [M, B/2, P, d]
    m, s, k, d = pts.shape
    flat = pts.reshape(m, s * k, d)
    if of_gradient:
        tv = tv_of_gradients(fam.input_grads(p, flat, create_graph=True).reshape(m, s, k, -1))
    else:
        v = fam.values(p, flat)
        tv = tv_of_outputs(v.reshape(m, s, k, *v.shape[2:]), v.dim() == 3)
    return (tv * ok).sum(1)


def batch_function_path_length(fam, p, xb, yb, valid, points, loss="mse") -> torch.Tensor:
    """FPL on the batch's segments, summed over them (eq. 10). [M]."""
    return _path_length(fam, p, xb, valid, points, of_gradient=False)


def batch_gradient_path_length(fam, p, xb, yb, valid, points, loss="mse") -> torch.Tensor:
    """GPL on the batch's segments, summed over them (eq. 11). [M]."""
    return _path_length(fam, p, xb, valid, points, of_gradient=True)


def batch_weights_product(fam, p: MLPStack, xb, yb, valid, points, loss="mse") -> torch.Tensor:
    """WP, exact (eq. 13). [M]."""
    return weights_products(p)


def batch_path_norm(fam, p: MLPStack, xb, yb, valid, points, loss="mse") -> torch.Tensor:
    """The path norm, exact. [M]."""
    return path_norms(p)


def batch_norm_product(fam, p, xb, yb, valid, points, loss="mse") -> torch.Tensor:
    """The product of the weight tensors' Frobenius norms, exact (Family.weight_norm). [M]."""
    return fam.weight_norm(p)


def parameter_gradient_sq_norms(p, losses) -> torch.Tensor:
    """||grad_theta L_m||^2 per model, for losses(q) -> [M] the per-model losses of a stack q. [M].

    Differentiable in p (double backward) when p's tensors require grad; otherwise just its value.
    """
    q = p if all(t.requires_grad for t in p.tensors()) else p.as_leaves()
    with torch.enable_grad():
        grads = torch.autograd.grad(losses(q).sum(), q.tensors(), create_graph=q is p)
    return sum(g.square().flatten(1).sum(1) for g in grads)


def batch_minibatch_gradient_norm(fam, p, xb, yb, valid, points, loss="mse") -> torch.Tensor:
    """||grad_theta L_b||^2 of the batch loss (Smith et al., 2021), differentiable by double backward. [M]."""
    return parameter_gradient_sq_norms(p, lambda q: losses.mean_loss(fam.values(q, xb), yb, loss, valid)[0])


# -- closed forms of the penalty's gradient for two-layer nets ------------------------------------------------------
@dataclass
class PenaltyGrads:
    """The gradient of sum_m lam_m S_m(batch) of two-layer nets: with respect to the batch's first-layer
    pre-activations dz [M, B, h] (None unless S depends on them), W1 [M, h, d] (None unless S depends on it
    directly) and w2 [M, 1, h]. The bias gradients follow from dz (b1) or are 0."""
    dz: torch.Tensor | None
    dW1: torch.Tensor | None
    dw2: torch.Tensor


def _leaves(p: MLPStack):
    return p.weights[0].detach().requires_grad_(True), p.weights[1].detach().requires_grad_(True)


def _autograd(penalty, lam, wrt) -> dict:
    return dict(zip(wrt, torch.autograd.grad((lam * penalty).sum(), wrt)))


def _gn_grads(p: MLPStack, lam, z, valid, points, power: int) -> PenaltyGrads:
    """GN (power 1) or GN² (power 2) on the batch: grad f(x) = W1^T (m(x) * w2) with the mask m of active units."""
    W1, w2 = _leaves(p)
    with torch.enable_grad():
        g = torch.bmm((z > 0).to(z.dtype) * w2, W1).norm(dim=-1).pow(power)   # [M, B]
        d = _autograd((g * valid).sum(1) / valid.sum(1), lam, [W1, w2])
    return PenaltyGrads(None, d[W1], d[w2])


def penalty_grad_gradient_norm(p, lam, z, valid, points) -> PenaltyGrads:
    """GN's penalty gradient for two-layer nets."""
    return _gn_grads(p, lam, z, valid, points, 1)


def penalty_grad_gradient_norm_squared(p, lam, z, valid, points) -> PenaltyGrads:
    """GN²'s penalty gradient for two-layer nets."""
    return _gn_grads(p, lam, z, valid, points, 2)


def penalty_grad_weights_product(p, lam, z, valid, points) -> PenaltyGrads:
    """WP's penalty gradient (eq. 13, exact)."""
    W1, w2 = _leaves(p)
    with torch.enable_grad():
        d = _autograd(weights_products(MLPStack([W1, w2], p.biases)), lam, [W1, w2])
    return PenaltyGrads(None, d[W1], d[w2])


def penalty_grad_function_path_length(p, lam, z, valid, points) -> PenaltyGrads:
    """FPL's penalty gradient: through the segment ends' pre-activations (no forward pass at the segment points)."""
    _, w2 = _leaves(p)
    zl = z.detach().requires_grad_(True)
    with torch.enable_grad():
        za, zb, ok = half_pairs(zl, valid)
        pen = (two_layer_segment_tvs(za, zb, w2[:, 0, :], None, points, ("fpl",))["fpl"] * ok).sum(1)
        d = _autograd(pen, lam, [zl, w2])
    return PenaltyGrads(d[zl], None, d[w2])


def _segment_steps(z, valid, points):
    """The changes of the active-unit masks along the batch's segments, dm [M, R, h] (R = segments x steps,
    entries -1, 0, 1), and each step's pair mask [M, R]."""
    m, _, h = z.shape
    za, zb, ok = half_pairs(z, valid)
    t = torch.linspace(0.0, 1.0, points, device=z.device, dtype=z.dtype)[:, None]
    zt = za[:, :, None, :] + t * (zb - za)[:, :, None, :]                       # [M, s, P, h]
    dm = (zt > 0).to(z.dtype).diff(dim=2).reshape(m, -1, h)                    # [M, s (P-1), h]
    return dm, ok.repeat_interleave(points - 1, dim=1)


def sign_changes(z, valid, points):
    """The nonzeros of _segment_steps' dm, found without forming it: (m, j, r, direction) per unit j of model m that
    changes sign along one of the batch's segments, at the segment's step r (global over the segments, as in dm),
    direction +1 where the unit turns on; ordered by (m, j, r). Pairs outside the batch are left out.

    Along a segment z(t) = za + t (zb - za) is affine in t, and its float evaluation is monotone in t, so a unit
    changes sign at most once: where its end points differ, at the step after the last point with the first's sign."""
    za, zb, ok = half_pairs(z, valid)
    t = torch.linspace(0.0, 1.0, points, device=z.device, dtype=z.dtype)      # t[0] is 0 and t[-1] is 1 exactly
    dz = zb - za
    on0 = za > 0                                                                # [M, s, h]: za + 0 dz is za
    mi, ji, si = ((on0 != (za + dz > 0)) & ok[..., None]).transpose(1, 2).nonzero(as_tuple=True)
    za_n, dz_n = za[mi, si, ji], dz[mi, si, ji]
    first = za_n > 0
    zt = za_n[:, None] + t * dz_n[:, None]                                      # [n, P]: the same values as dm's
    k = ((zt > 0) == first[:, None]).sum(1) - 1                                 # the step: between k and k + 1
    return mi, ji, si * (points - 1) + k, 1.0 - 2.0 * first.to(z.dtype)


def _bag_sums(weight, rows, starts, scale):
    """Row k of the result is sum_i scale_i * weight[rows_i] over the i of bag k (bags are runs of consecutive i
    that start at `starts`; an empty bag gives 0): a sparse-dense product with the nonzeros of each result row
    given in order. embedding_bag does it on a CPU at about half the cost of a CSR product (whose fixed cost per call
    dominates at the few hundred nonzeros of a trained net's batch; docs/performance.md)."""
    return torch.nn.functional.embedding_bag(rows, weight, starts, mode="sum", per_sample_weights=scale)


def penalty_grad_gradient_path_length(p, lam, z, valid, points) -> PenaltyGrads:
    """GPL's penalty gradient by hand (eq. 11 on the batch's segments, inputspace.two_layer_segment_tvs):
    S = sum_r |V_r| with V_r = du_r W1, du_r = (m_k - m_{k-1}) * w2 over the segments' steps r. With c_r = 1 / |V_r|
    and A = dm^T (c * V): dS/dW1 = w2 * A and dS/dw2 = rowsum(A * W1).

    Along a segment each unit changes sign at most once (sign_changes), so du is sparse: a few percent of its
    entries on the paper's net with 10 points, fewer with more. On a CPU, V (its nonzero rows) and A are
    sparse-dense products over those nonzeros (_bag_sums), a small fraction of the two 256 x 784 x 256 products of
    the dense form; on other devices the dense form (gradient_path_length_dense_grad), whose shapes do not depend on
    the data."""
    if z.device.type != "cpu":
        return gradient_path_length_dense_grad(p, lam, z, valid, points)
    W1, w2 = p.weights[0].detach(), p.weights[1].detach()
    m, h, d = W1.shape
    mi, ji, ri, sign = sign_changes(z, valid, points)                           # ordered by unit, then step
    units = mi * h + ji                                                         # rows of W1 [M h, d]
    steps_per_model = z.shape[1] // 2 * (points - 1)                            # R of dm [M, R, h]
    keys, by_step = torch.sort(mi * steps_per_model + ri, stable=True)          # by step, then unit
    steps, row_sorted, per_step = torch.unique_consecutive(keys, return_inverse=True, return_counts=True)
    W1f = W1.reshape(m * h, d)
    V = _bag_sums(W1f, units[by_step], per_step.cumsum(0) - per_step,
                  (sign * w2[mi, 0, ji])[by_step])                              # the nonzero rows of du W1
    norm = torch.linalg.vector_norm(V, dim=1)
    pos = norm > 0
    c = torch.where(pos, lam[steps // steps_per_model] / torch.where(pos, norm, 1.0), 0.0)
    row = torch.empty_like(row_sorted)
    row[by_step] = row_sorted                                                   # each nonzero's row of V
    per_unit = torch.bincount(units, minlength=m * h)
    A = _bag_sums(V, row, per_unit.cumsum(0) - per_unit, sign * c[row])        # dm^T (c V), row per unit
    d_w2 = torch.linalg.vecdot(A, W1f).reshape(m, 1, h)
    return PenaltyGrads(None, A.mul_(w2.reshape(-1, 1)).reshape(m, h, d), d_w2)   # in place: A is ours


def gradient_path_length_dense_grad(p, lam, z, valid, points) -> PenaltyGrads:
    """GPL's penalty gradient in dense form (no data-dependent shapes, for accelerators):
    S = sum_r sqrt(q_r), q_r = du_r G du_r^T, G = W1 W1^T. Then dS/dG = du^T diag(c) du with c_r = 1 / (2 sqrt(q_r)),
    dS/dW1 = 2 (dS/dG) W1 (G is symmetric), and dS/d du_r = 2 c_r (du_r G), whose product du G the forward pass
    already holds: autograd would form G's two transposed products and du G's gradient again."""
    W1, w2 = p.weights[0].detach(), p.weights[1].detach()
    dm, ok = _segment_steps(z, valid, points)
    du = dm * w2                                                                # w2 [M, 1, h]
    gram = torch.bmm(W1, W1.transpose(1, 2))
    du_g = torch.bmm(du, gram)
    q = (du_g * du).sum(-1)                                                     # [M, R]
    pos = q > 0
    root = torch.where(pos, q, 1.0).sqrt()
    weight = lam[:, None] * ok.to(z.dtype)                                      # lam_m for segment r's steps
    c = torch.where(pos, weight / (2.0 * root), 0.0)                            # [M, R]
    d_gram = torch.bmm((du * c[..., None]).transpose(1, 2), du)                 # [M, h, h], symmetric
    d_w2 = (2.0 * c[..., None] * du_g * dm).sum(1, keepdim=True)               # [M, 1, h]
    return PenaltyGrads(None, 2.0 * torch.bmm(d_gram, W1), d_w2)
