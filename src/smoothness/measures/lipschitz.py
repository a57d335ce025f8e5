"""Bounds on the Lipschitz constant L = sup_x ||grad_x f(x)|| of a network, beside GN (its mean over the data).

Prach & Lampert's work on Lipschitz networks makes L the natural worst-case neighbour of GN. For ReLU MLPs neither
is cheap exactly (L is NP-hard), so each record carries a bracket:

  lower  the largest ||grad f(x)|| at the held-out points, then improved by projected gradient ascent from the
         STARTS points of largest gradient norm, within the data's box (the coordinate-wise min and max of the
         points). ||grad f|| of a ReLU net is piecewise constant, so its own gradient is 0 almost everywhere; the
         ascent follows instead the gradient of ||grad f_beta||, f_beta the same net with ReLU replaced by
         softplus(beta z) / beta, beta = SHARPNESS / std of the layer's pre-activations at the start points, and
         evaluates the true ||grad f|| at every iterate. Every value is the gradient norm of f at a point (where
         a unit sits exactly at its kink, torch's relu'(0) = 0 gives the gradient of an adjacent linear region),
         so the maximum is a lower bound of L over the box.
  upper  the product of the layers' spectral norms ||W_l||_2 (ReLU is 1-Lipschitz): L <= prod_l ||W_l||_2.
         The path norm (measures.path_norms) is another upper bound for ReLU MLPs; neither dominates the other.

Both are batched over a stack of M models and computed per model, so a model's bounds do not depend on the others.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from smoothness.models import MLPStack, input_gradient

STARTS = 16        # start points of the ascent: the held-out points of largest ||grad f|| per model
STEPS = 20         # ascent steps
STEP = 0.02        # step per coordinate, as a fraction of the box's width (scaled by the largest component)
SHARPNESS = 30.0   # softplus beta times the std of a layer's pre-activations at the start points


def spectral_products(p: MLPStack) -> torch.Tensor:
    """Upper bound of L: prod over layers of the largest singular value of W_l. [M]; NaN for a model with
    non-finite weights (a diverged one), which the SVD does not take."""
    out = torch.ones(p.n_models, dtype=p.weights[0].dtype, device=p.weights[0].device)
    for w in p.weights:
        finite = torch.isfinite(w).flatten(1).all(1)
        norms = torch.linalg.matrix_norm(torch.where(finite[:, None, None], w, 0.0), ord=2)
        out = out * torch.where(finite, norms, torch.nan)
    return out


def _betas(p: MLPStack, x: torch.Tensor) -> list[torch.Tensor]:
    """beta of each hidden layer per model [M]: SHARPNESS / std of its pre-activations at the points x [M, k, d]."""
    betas, h = [], x
    for w, b in zip(p.weights[:-1], p.biases[:-1]):
        z = torch.baddbmm(b[:, None, :], h, w.transpose(1, 2))
        betas.append(SHARPNESS / z.flatten(1).std(1).clamp_min(1e-12))
        h = z.clamp_min(0.0)
    return betas


def _ascent_direction(p: MLPStack, x: torch.Tensor, betas: list[torch.Tensor]) -> torch.Tensor:
    """d/dx of ||grad_x f_beta(x)|| at x [M, k, d], f_beta the softplus relaxation of the ReLU net."""
    with torch.enable_grad():
        xi = x.detach().requires_grad_(True)
        h = xi
        for l, (w, b) in enumerate(zip(p.weights, p.biases)):
            h = torch.baddbmm(b[:, None, :], h, w.transpose(1, 2))
            if l < len(betas):
                beta = betas[l][:, None, None]
                h = F.softplus(h * beta) / beta
        (g,) = torch.autograd.grad(h.sum(), xi, create_graph=True)
        (d,) = torch.autograd.grad(g.norm(dim=-1).sum(), xi)
    return d


def lower_bounds(p: MLPStack, x: torch.Tensor, starts: int = STARTS, steps: int = STEPS,
                 norms: torch.Tensor | None = None) -> torch.Tensor:
    """Lower bound of L over the box of the points x [M, n, d]: the largest ||grad f|| at the points, raised by
    `steps` ascent steps from the `starts` points of largest norm (norms [M, n], if already computed). [M]."""
    if norms is None:
        norms = input_gradient(p, x).norm(dim=-1)
    best = norms.max(1).values
    if steps <= 0 or starts <= 0:
        return best
    z, _ = top_points(x, norms, starts)
    return ascend(p, z, x.min(1, keepdim=True).values, x.max(1, keepdim=True).values, best, steps)


def top_points(x: torch.Tensor, norms: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (at most) k points of x [M, n, d] of largest norms [M, n]: ([M, k, d], their norms [M, k])."""
    top = norms.topk(min(k, x.shape[1]), dim=1)
    return x.gather(1, top.indices[..., None].expand(-1, -1, x.shape[2])), top.values


def ascend(p: MLPStack, z: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, best: torch.Tensor,
           steps: int = STEPS) -> torch.Tensor:
    """best [M] raised by `steps` projected ascent steps on ||grad f|| from the start points z [M, k, d], within
    the box [lo, hi] ([M, 1, d] each). [M]."""
    width = hi - lo
    betas = _betas(p, z)
    for _ in range(steps):
        d = _ascent_direction(p, z, betas) * width
        scale = d.abs().amax(-1, keepdim=True)
        z = torch.minimum(torch.maximum(z + STEP * width * d / torch.where(scale > 0, scale, 1.0), lo), hi)
        best = torch.maximum(best, input_gradient(p, z).norm(dim=-1).max(1).values)
    return best
