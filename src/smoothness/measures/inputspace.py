"""Smoothness measures of Volhejn & Lampert (2020), sec. 3 (lower values mean smoother functions), batched: the
estimators over points [M, n, d] of M models at once, which single.py (one model, any torch module, streamed data)
and registry.measure_stack (a stack of ReLU MLPs) call, vectorized over segments. For ReLU MLPs the input
gradient is computed in closed form (`models.input_gradient`); for a scalar module by autograd of the sum over
points (each output row depends only on its own input row, true in eval mode), for K outputs by one backward pass
per output (anymodule.py).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from smoothness import paper
from smoothness.measures import lipschitz
from smoothness.measures.estimate import mean_and_se
from smoothness.models import MLPStack, ReLUMLP, forward, input_gradient, path_norms, weights_products  # noqa: F401
from smoothness.runtime import rng

DEFAULT_SEGMENTS = paper.SEGMENTS
DEFAULT_POINTS = paper.POINTS_PER_SEGMENT
# Segment chunks are sized so that the points of one chunk hold about this many floats.
CHUNK_ELEMENTS = 1 << 24


# ----------------------------------------------------------------------------------------------
# Evaluating f and its input gradient for a stack of models.

class Evaluator:
    """values(x) -> [M, n] and grads(x) -> [M, n, d] for inputs x of shape [M, n, d]."""

    def __init__(self, values, grads, n_models: int, dtype, device, stack: MLPStack | None = None, outputs: int = 1,
                 max_points: int | None = None):
        self.values, self.grads, self.stack = values, grads, stack
        self.n_models, self.dtype, self.device = n_models, dtype, device
        self.outputs = outputs   # K: values are [M, n, K] and grads the flattened Jacobians [M, n, K * d] if K > 1
        self.max_points = max_points   # points per call at most (a module's activations outweigh its Jacobians)


def _stack_from_sequential(f: nn.Sequential):
    """An MLPStack for nn.Sequential(Linear, ReLU, ..., Linear) with scalar output, else None."""
    mods = list(f)
    if len(mods) % 2 == 0:
        return None
    lins, acts = mods[0::2], mods[1::2]
    if not all(isinstance(m, nn.Linear) for m in lins) or not all(isinstance(a, nn.ReLU) for a in acts):
        return None
    if lins[-1].out_features != 1:
        return None
    def bias(m):
        return m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features)
    return MLPStack([m.weight.detach()[None] for m in lins], [bias(m)[None] for m in lins])


def relu_stack(f) -> MLPStack | None:
    """The MLPStack behind f if f is a ReLU MLP this package can differentiate in closed form."""
    if isinstance(f, MLPStack):
        return f
    if isinstance(f, ReLUMLP):
        return f.stack() if f.widths[-1] == 1 else None   # the closed forms are of one output
    if isinstance(f, nn.Sequential):
        return _stack_from_sequential(f)
    return None


def evaluator(f) -> Evaluator:
    """The evaluator of a ReLU MLP (closed-form gradients); other modules go through _prepare."""
    p = relu_stack(f)
    if p is None:
        raise TypeError(f"expected a ReLU MLP, got {type(f).__name__}")
    w = p.weights[0]
    return Evaluator(lambda x: forward(p, x), lambda x: input_gradient(p, x), p.n_models, w.dtype, w.device, stack=p)


def as_points(x, ev: Evaluator) -> torch.Tensor:
    """Inputs as a float tensor of shape [M, n, d] (an [n, d] array is shared by all models)."""
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    x = x.to(device=ev.device, dtype=ev.dtype)
    if x.dim() == 2:
        x = x.expand(ev.n_models, *x.shape)
    if x.dim() != 3 or x.shape[0] != ev.n_models:
        raise ValueError(f"points must be [n, d] or [M, n, d] with M = {ev.n_models}; got {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError("at least one point is needed")
    return x


# ----------------------------------------------------------------------------------------------
# Batched estimators over [M, n, d] points.

def _point_chunks(n: int, per_point: int, m: int, cap: int | None = None):
    step = max(1, CHUNK_ELEMENTS // max(1, per_point * m))
    step = min(step, cap) if cap else step
    return ((i, min(n, i + step)) for i in range(0, n, step))   # lazily: millions of chunks hold no memory


def gradient_norm_sums(ev: Evaluator, x: torch.Tensor, power: int = 1):
    """The sum over the points x [M, n, d] of ||grad f(x_i)||^power (in the points' dtype: eq. 4's mean), and that sum
    and the sum of squares in float64 (its standard error, free of cancellation): [M] each, which streamed data
    adds up batch by batch."""
    total = x.new_zeros(x.shape[0])
    total64 = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    sq = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for i, j in _point_chunks(x.shape[1], x.shape[2] * ev.outputs, x.shape[0], ev.max_points):
        v = ev.grads(x[:, i:j]).norm(dim=-1).pow(power)
        total += v.sum(1)
        total64 += v.double().sum(1)
        sq += v.double().square().sum(1)
    return total, total64, sq


def gradient_norms(ev: Evaluator, x: torch.Tensor, power: int = 1, with_se: bool = False):
    """Eq. 4: GN = (1/N) sum_i ||grad f(x_i)||; power=2 gives the mean squared norm GN^2. [M]; with_se: also its
    standard error over the N points, (mean, se)."""
    total, total64, sq = gradient_norm_sums(ev, x, power)
    mean = total / x.shape[1]
    return (mean, mean_and_se(total64, sq, x.shape[1])[1].to(mean.dtype)) if with_se else mean


def point_gradient_norms(ev: Evaluator, x: torch.Tensor) -> torch.Tensor:
    """||grad f(x_i)|| at every point, read in chunks. [M, n]."""
    chunks = _point_chunks(x.shape[1], x.shape[2] * ev.outputs, x.shape[0], ev.max_points)
    return torch.cat([ev.grads(x[:, i:j]).norm(dim=-1) for i, j in chunks], dim=1)


def lipschitz_lower_bounds(ev: Evaluator, x: torch.Tensor) -> torch.Tensor:
    """Lower bound of the Lipschitz constant: the largest ||grad f|| at the points x [M, n, d], raised by projected
    gradient ascent for ReLU MLPs (lipschitz.lower_bounds). [M]."""
    norms = point_gradient_norms(ev, x)
    if ev.stack is None:
        return norms.max(1).values
    return lipschitz.lower_bounds(ev.stack, x, norms=norms)


def segment_endpoints(n: int, segments: int, seed: int, device=None):
    """Indices (ia, ib) of `segments` random pairs of points, drawn i.i.d. uniformly from n points."""
    k = torch.arange(segments, device=device)
    ia = rng.randint(n, seed, rng.STREAM_SEGMENTS, k, 0, device=device)
    ib = rng.randint(n, seed, rng.STREAM_SEGMENTS, k, 1, device=device)
    return ia, ib


def segment_points(xa: torch.Tensor, xb: torch.Tensor, points: int) -> torch.Tensor:
    """Eq. 5 sampled at t_k = k / (points - 1): [..., d] end points -> [..., points, d]."""
    t = torch.linspace(0.0, 1.0, points, device=xa.device, dtype=xa.dtype)[:, None]
    return xa[..., None, :] + t * (xb - xa)[..., None, :]


def tv_of_values(v: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Eq. 10: sum_k |f(t_k) - f(t_{k-1})| over samples along `dim`."""
    return v.diff(dim=dim).abs().sum(dim)


def tv_of_outputs(v: torch.Tensor, vector: bool) -> torch.Tensor:
    """Eq. 10 for scalar samples v [..., P] (tv_of_values), or with ||f(t_k) - f(t_k-1)||_2 for vector samples
    v [..., P, K]."""
    return v.diff(dim=-2).norm(dim=-1).sum(-1) if vector else tv_of_values(v)


def tv_of_gradients(g: torch.Tensor) -> torch.Tensor:
    """Eq. 11 sampled like eq. 10: sum_k ||grad(t_k) - grad(t_{k-1})||_2 for g of shape [..., P, d]."""
    return g.diff(dim=-2).norm(dim=-1).sum(-1)


def path_lengths(ev: Evaluator, x: torch.Tensor, segments: int, points: int, seed: int,
                 which: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Eqs. 9-11: mean over segments between random pairs of the points x [M, n, d] of the sampled total variation
    of f ('fpl') and of grad f ('gpl'), with their standard errors over the segments ('fpl_se', 'gpl_se'). [M]."""
    check_segments(segments, points)
    ia, ib = segment_endpoints(x.shape[1], segments, seed, device=x.device)
    return segment_path_lengths(ev, lambda i, j: (x[:, ia[i:j]], x[:, ib[i:j]]), x.shape[0], segments, points,
                                which, x.shape[2])


def check_segments(segments: int, points: int) -> None:
    """A ValueError for fewer than 1 segment or 2 points per segment."""
    if points < 2:
        raise ValueError("points per segment must be at least 2")
    if segments < 1:
        raise ValueError("segments must be at least 1")


def segment_path_lengths(ev: Evaluator, ends, m: int, segments: int, points: int, which: tuple[str, ...], d: int,
                         progress=None) -> dict[str, torch.Tensor]:
    """Eqs. 9-11 on given segments: ends(i, j) -> (xa, xb), the end points [M, j - i, d] of segments i..j-1, read
    in chunks that bound memory; progress(k) is told of every k segments done. {'fpl', 'fpl_se', ...}: [M]."""
    two_layer = ev.stack is not None and ev.stack.depth == 1
    if two_layer:
        W1, b1 = ev.stack.weights[0], ev.stack.biases[0]
        w2 = ev.stack.weights[1][:, 0, :]  # the output bias cancels in every difference
        gram = torch.bmm(W1, W1.transpose(1, 2)) if "gpl" in which else None
        per_segment = points * W1.shape[1]
    else:
        per_segment = points * d * ev.outputs
    sums = None
    cap = None if ev.max_points is None else max(1, ev.max_points // points)
    for i, j in _point_chunks(segments, per_segment, m, cap):
        xa, xb = ends(i, j)
        sums = sums or _TVSums(which, m, xa)
        if two_layer:   # without [S, P, d] tensors: from the pre-activations at the ends (two_layer_segment_tvs)
            za = torch.baddbmm(b1[:, None, :], xa, W1.transpose(1, 2))
            zb = torch.baddbmm(b1[:, None, :], xb, W1.transpose(1, 2))
            for k, v in two_layer_segment_tvs(za, zb, w2, gram, points, which).items():
                sums.add(k, v)
        else:
            flat = segment_points(xa, xb, points).reshape(m, -1, d)   # [M, s P, d]
            s = j - i
            if "fpl" in which:  # eq. 10: sum_k |f(t_k) - f(t_{k-1})| (the 2-norm of the difference for K outputs)
                vector = ev.outputs > 1
                v = ev.values(flat).reshape(m, s, points, *((-1,) if vector else ()))
                sums.add("fpl", tv_of_outputs(v, vector))
            if "gpl" in which:  # eq. 11 sampled: sum_k ||grad f(t_k) - grad f(t_{k-1})||_2 (Frobenius: Jacobians)
                sums.add("gpl", tv_of_gradients(ev.grads(flat).reshape(m, s, points, -1)))
        if progress is not None:
            progress(j - i)
    return sums.result(segments)


class _TVSums:
    """The sums over segments of their total variations (in their dtype, for the mean), and the sum and the sum of
    squares in float64 (for the standard error), per measure ('fpl', 'gpl') and model."""

    def __init__(self, which, m: int, like: torch.Tensor):
        self.sum = {k: like.new_zeros(m) for k in which}
        self.sum64 = {k: torch.zeros(m, dtype=torch.float64, device=like.device) for k in which}
        self.sq = {k: torch.zeros(m, dtype=torch.float64, device=like.device) for k in which}

    def add(self, k: str, tv: torch.Tensor) -> None:
        """Add the TVs [M, s] of s more segments."""
        self.sum[k] += tv.sum(1)
        self.sum64[k] += tv.double().sum(1)
        self.sq[k] += tv.double().square().sum(1)

    def result(self, segments: int) -> dict[str, torch.Tensor]:
        """{'fpl': mean over the segments, 'fpl_se': its standard error, ...}."""
        out = {}
        for k, total in self.sum.items():
            out[k] = total / segments
            out[k + "_se"] = mean_and_se(self.sum64[k], self.sq[k], segments)[1].to(total.dtype)
        return out


def two_layer_segment_tvs(za: torch.Tensor, zb: torch.Tensor, w2: torch.Tensor, gram: torch.Tensor | None,
                          points: int, which) -> dict[str, torch.Tensor]:
    """The sampled total variations of f ('fpl', eq. 10) and of grad f ('gpl', eq. 11) of two-layer ReLU nets
    on segments, from the first-layer pre-activations at the segments' ends. [M, s] each.

    za, zb: [M, s, h] pre-activations W1 a + b1 and W1 b + b1; w2: [M, h] output weights; gram: [M, h, h] the
    Gram matrix W1 W1^T (needed for 'gpl'). Along a segment the pre-activations are affine in t, so
    z(t_k) = z(a) + t_k (z(b) - z(a)) at t_k = k / (points - 1) needs no matmul with W1; the output bias cancels
    in every difference. The input gradient is W1^T (m(t) * w2) for the mask m of active units, so
    ||grad(t_k) - grad(t_{k-1})||^2 = du^T (W1 W1^T) du with du = (m_k - m_{k-1}) * w2. Differentiable in za, zb,
    w2 and gram (the masks are constant almost everywhere; a zero difference has gradient 0), which is how the
    path-length regularizers of regularizers.py train on it.
    """
    m, s, h = za.shape
    t = torch.linspace(0.0, 1.0, points, device=za.device, dtype=za.dtype)[:, None]
    zt = za[:, :, None, :] + t * (zb - za)[:, :, None, :]               # [M, s, P, h]
    out = {}
    if "fpl" in which:
        f = torch.relu(zt) @ w2[:, None, :, None]                       # [M, s, P, 1]
        out["fpl"] = tv_of_values(f[..., 0])
    if "gpl" in which:
        active = (zt > 0).to(za.dtype)
        du = (active.diff(dim=2) * w2[:, None, None, :]).reshape(m, -1, h)   # [M, s (P-1), h]
        q = (torch.bmm(du, gram) * du).sum(-1)
        pos = q > 0   # rounding can leave a tiny negative q for a zero difference
        norms = torch.where(pos, torch.where(pos, q, 1.0).sqrt(), 0.0)
        out["gpl"] = norms.reshape(m, s, points - 1).sum(-1)
    return out
