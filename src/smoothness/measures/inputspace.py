"""Smoothness measures of Volhejn & Lampert (2020), sec. 3; lower values mean smoother functions.

Public functions take one model f and return a float: a ReLU MLP of this package, or any torch module mapping
inputs [n, *shape] (vectors, images [n, C, H, W], ...) to [n] or [n, K] (anymodule.py: flattened inputs,
Frobenius norms of Jacobians for K outputs, or one output or the top-two margin; BatchNorm and Dropout in
training mode are refused). `measure_stack` computes every measure for a stack of M ReLU MLPs at once,
batched over models and vectorized over segments. For ReLU MLPs the input gradient is computed in
closed form (`models.input_gradient`); for a scalar module by autograd of the sum over points (each output row
depends only on its own input row, true in eval mode), for K outputs by torch.func (vmap of jacrev).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from smoothness import paper
from smoothness.measures import anymodule, lipschitz
from smoothness.models import MLPStack, ReLUMLP, forward, input_gradient
from smoothness.runtime import precision, rng

DEFAULT_SEGMENTS = paper.SEGMENTS
DEFAULT_POINTS = paper.POINTS_PER_SEGMENT
# Segment chunks are sized so that the points of one chunk hold about this many floats.
CHUNK_ELEMENTS = 1 << 24


# ----------------------------------------------------------------------------------------------
# Evaluating f and its input gradient for a stack of models.

class _Evaluator:
    """values(x) -> [M, n] and grads(x) -> [M, n, d] for inputs x of shape [M, n, d]."""

    def __init__(self, values, grads, n_models: int, dtype, device, stack: MLPStack | None = None, outputs: int = 1):
        self.values, self.grads, self.stack = values, grads, stack
        self.n_models, self.dtype, self.device = n_models, dtype, device
        self.outputs = outputs   # K: values are [M, n, K] and grads the flattened Jacobians [M, n, K * d] if K > 1


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
        return f.stack()
    if isinstance(f, nn.Sequential):
        return _stack_from_sequential(f)
    return None


def evaluator(f) -> _Evaluator:
    """The evaluator of a ReLU MLP (closed-form gradients); other modules go through _prepare."""
    p = relu_stack(f)
    if p is None:
        raise TypeError(f"expected a ReLU MLP, got {type(f).__name__}")
    w = p.weights[0]
    return _Evaluator(lambda x: forward(p, x), lambda x: input_gradient(p, x), p.n_models, w.dtype, w.device, stack=p)


def _prepare(f, x, output=None) -> tuple[_Evaluator, torch.Tensor]:
    """The evaluator of f and the points as [M, n, d]. A ReLU MLP takes x [n, d] or [M, n, d]; any other module
    or callable takes x [n, *shape], flattened to d = prod(shape), with scalar or K outputs (anymodule.py)."""
    p = relu_stack(f)
    if p is not None:
        if output not in (None, 0):
            raise ValueError(f"output={output!r}: a ReLU MLP of this package has one output")
        ev = evaluator(p)
        return ev, as_points(x, ev)
    if not callable(f):
        raise TypeError(f"expected a torch module or callable f: [n, ...] -> [n] or [n, K], got {type(f).__name__}")
    params = list(f.parameters()) if isinstance(f, nn.Module) else []
    dtype = params[0].dtype if params else torch.float32
    device = params[0].device if params else torch.device("cpu")
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).to(device=device, dtype=dtype)
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"points must be [n, ...] with n >= 1; got {tuple(x.shape)}")
    flat = x.reshape(1, x.shape[0], -1)
    values, grads, k = anymodule.parts(f, tuple(x.shape[1:]), output, flat[0, :1])
    return _Evaluator(values, grads, 1, dtype, device, outputs=k), flat


def as_points(x, ev: _Evaluator) -> torch.Tensor:
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

def _point_chunks(n: int, per_point: int, m: int):
    step = max(1, CHUNK_ELEMENTS // max(1, per_point * m))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def gradient_norms(ev: _Evaluator, x: torch.Tensor, power: int = 1) -> torch.Tensor:
    """Eq. 4: GN = (1/N) sum_i ||grad f(x_i)||; power=2 gives the mean squared norm GN^2. [M]."""
    total = x.new_zeros(x.shape[0])
    for i, j in _point_chunks(x.shape[1], x.shape[2] * ev.outputs, x.shape[0]):
        total += ev.grads(x[:, i:j]).norm(dim=-1).pow(power).sum(1)
    return total / x.shape[1]


def point_gradient_norms(ev: _Evaluator, x: torch.Tensor) -> torch.Tensor:
    """||grad f(x_i)|| at every point, read in chunks. [M, n]."""
    chunks = _point_chunks(x.shape[1], x.shape[2] * ev.outputs, x.shape[0])
    return torch.cat([ev.grads(x[:, i:j]).norm(dim=-1) for i, j in chunks], dim=1)


def lipschitz_lower_bounds(ev: _Evaluator, x: torch.Tensor) -> torch.Tensor:
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


def path_lengths(ev: _Evaluator, x: torch.Tensor, segments: int, points: int, seed: int,
                  which: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Eqs. 9-11: mean over segments of the sampled total variation of f ('fpl') and of grad f ('gpl')."""
    if points < 2:
        raise ValueError("points per segment must be at least 2")
    if segments < 1:
        raise ValueError("segments must be at least 1")
    m, n, d = x.shape
    ia, ib = segment_endpoints(n, segments, seed, device=x.device)
    if ev.stack is not None and ev.stack.depth == 1:
        return _two_layerpath_lengths(ev.stack, x, ia, ib, points, which)
    sums = {k: x.new_zeros(m) for k in which}
    for i, j in _point_chunks(segments, points * d * ev.outputs, m):
        pts = segment_points(x[:, ia[i:j]], x[:, ib[i:j]], points)  # [M, s, P, d]
        flat = pts.reshape(m, -1, d)
        s = j - i
        if "fpl" in which:  # eq. 10: sum_k |f(t_k) - f(t_{k-1})| (the 2-norm of the difference for K outputs)
            vector = ev.outputs > 1
            v = ev.values(flat).reshape(m, s, points, *((-1,) if vector else ()))
            sums["fpl"] += tv_of_outputs(v, vector).sum(1)
        if "gpl" in which:  # eq. 11 sampled: sum_k ||grad f(t_k) - grad f(t_{k-1})||_2 (Frobenius for Jacobians)
            sums["gpl"] += tv_of_gradients(ev.grads(flat).reshape(m, s, points, -1)).sum(1)
    return {k: v / segments for k, v in sums.items()}


def _two_layerpath_lengths(p: MLPStack, x: torch.Tensor, ia, ib, points: int, which) -> dict[str, torch.Tensor]:
    """Eqs. 9-11 for two-layer nets, exactly as the generic path but without [S, P, d] tensors
    (two_layer_segment_tvs), over segments chunked to bound memory."""
    m, _, _ = x.shape
    W1, b1 = p.weights[0], p.biases[0]
    w2 = p.weights[1][:, 0, :]  # the output bias cancels in every difference
    z = torch.baddbmm(b1[:, None, :], x, W1.transpose(1, 2))            # [M, n, h] at the points
    gram = torch.bmm(W1, W1.transpose(1, 2)) if "gpl" in which else None
    sums = {k: x.new_zeros(m) for k in which}
    for i, j in _point_chunks(ia.numel(), points * z.shape[2], m):
        tvs = two_layer_segment_tvs(z[:, ia[i:j]], z[:, ib[i:j]], w2, gram, points, which)
        for k, v in tvs.items():
            sums[k] += v.sum(1)
    return {k: v / ia.numel() for k, v in sums.items()}


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


def weights_products(p: MLPStack) -> torch.Tensor:
    """Eq. 13: WP = sum_i |w2_i| * ||w1_i|| for two-layer ReLU nets. [M]."""
    if p.depth != 1:
        raise ValueError(f"weights_product is defined for two-layer ReLU networks (one hidden layer); "
                         f"this network has {p.depth} hidden layers")
    return (p.weights[1][:, 0, :].abs() * p.weights[0].norm(dim=2)).sum(1)


def path_norms(p: MLPStack) -> torch.Tensor:
    """WP generalized to any depth as a path norm: the sum over all input-to-output paths through the
    hidden units of the product of the absolute weights along the path, with the first layer's weights
    of a unit taken together as their Euclidean norm:
        PN = |w_out|^T |W_L| ... |W_2| (||W_1[i, :]||)_i.
    For one hidden layer this is eq. 13 exactly; for any depth it bounds sup_x ||grad_x f(x)||. [M]."""
    v = p.weights[0].norm(dim=2)                                 # [M, h_1]
    for w in p.weights[1:]:
        v = torch.bmm(w.abs(), v[..., None])[..., 0]             # [M, h_{l+1}]
    return v[:, 0]


# ----------------------------------------------------------------------------------------------
# Public single-model API: each returns a float.

@precision.strict_fp32()
def gradient_norm(f, x, output=None) -> float:
    """Eq. 4: mean over the points x [n, ...] of the Euclidean norm of the input gradient of f (the Frobenius norm
    of the Jacobian for K outputs; output: None, an output index or 'margin', anymodule.py)."""
    ev, x = _prepare(f, x, output)
    with torch.no_grad():
        return float(gradient_norms(ev, x, 1)[0])


@precision.strict_fp32()
def gradient_norm_squared(f, x, output=None) -> float:
    """Mean over the points x of the squared norm of the input gradient (GN^2)."""
    ev, x = _prepare(f, x, output)
    with torch.no_grad():
        return float(gradient_norms(ev, x, 2)[0])


@precision.strict_fp32()
def function_path_length(f, x, segments: int = DEFAULT_SEGMENTS, points: int = DEFAULT_POINTS,
                         seed: int = 0, output=None) -> float:
    """Eqs. 9-10: mean sampled total variation of f on segments between random pairs of points x (with
    ||f(t_k) - f(t_k-1)||_2 for K outputs)."""
    ev, x = _prepare(f, x, output)
    with torch.no_grad():
        return float(path_lengths(ev, x, segments, points, seed, ("fpl",))["fpl"][0])


@precision.strict_fp32()
def gradient_path_length(f, x, segments: int = DEFAULT_SEGMENTS, points: int = DEFAULT_POINTS,
                         seed: int = 0, output=None) -> float:
    """Eq. 11, sampled like FPL: mean total variation (L2 norm of differences) of grad f on segments (the
    Frobenius norm of the Jacobian's change for K outputs)."""
    ev, x = _prepare(f, x, output)
    with torch.no_grad():
        return float(path_lengths(ev, x, segments, points, seed, ("gpl",))["gpl"][0])


@precision.strict_fp32()
def segment_total_variation(f, a, b, points: int = DEFAULT_POINTS, of: str = "function", output=None) -> float:
    """Eq. 10 on one segment a -> b: sampled TV of f ('function') or of grad f ('gradient')."""
    if of not in ("function", "gradient"):
        raise ValueError("of must be 'function' or 'gradient'")
    if points < 2:
        raise ValueError("points per segment must be at least 2")
    ev, ab = _prepare(f, torch.stack([torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))]), output)
    with torch.no_grad():
        pts = segment_points(ab[:, 0], ab[:, 1], points)  # [M, P, d]
        if of == "gradient":
            return float(tv_of_gradients(ev.grads(pts))[0])
        return float(tv_of_outputs(ev.values(pts), ev.outputs > 1)[0])


def _of_stack(f, fn, requirement: str) -> float:
    p = relu_stack(f)
    if p is None:
        raise ValueError(f"{fn.__name__[:-1]} is defined for {requirement}")
    with torch.no_grad():
        return float(fn(p)[0])


@precision.strict_fp32()
def weights_product(f) -> float:
    """Eq. 13 for a two-layer ReLU network (ReLUMLP, or nn.Sequential(Linear, ReLU, Linear))."""
    return _of_stack(f, weights_products, "two-layer ReLU networks only: pass a smoothness ReLUMLP or "
                                          "nn.Sequential(Linear, ReLU, Linear)")


@precision.strict_fp32()
def path_norm(f) -> float:
    """The path norm (WP generalized to any depth, see path_norms) of a ReLU MLP (ReLUMLP or
    nn.Sequential of Linear and ReLU layers)."""
    return _of_stack(f, path_norms, "ReLU MLPs: pass a smoothness ReLUMLP or an nn.Sequential of Linear and "
                                    "ReLU layers")


@precision.strict_fp32()
def lipschitz_bounds(f, x, output=None) -> tuple[float, float]:
    """(lower, upper) bounds of the Lipschitz constant sup ||grad f|| of f over the box of the points x [n, d]
    (lipschitz.py). For a ReLU MLP: the ascent-raised lower bound and the product of spectral norms; for any other
    module: the largest ||grad f|| at the points, and NaN (no upper bound is computed)."""
    ev, x = _prepare(f, x, output)
    if ev.outputs > 1:
        raise ValueError(f"f has {ev.outputs} outputs: the bounds are for a scalar function; pass output=k or "
                         "output='margin'")
    with torch.no_grad():
        lower = float(lipschitz_lower_bounds(ev, x)[0])
    upper = float(lipschitz.spectral_products(ev.stack)[0]) if ev.stack is not None else float("nan")
    return lower, upper


def fpl_lower_bound(y) -> float:
    """Lower bound of FPL for interpolating models (paper sec. 4.3): E|y - y'| over i.i.d. pairs.

    Exact mean over all n^2 ordered pairs (i = j included), in O(n log n): after sorting,
    sum_{i<j} (y_(j) - y_(i)) = sum_k y_(k) (2k - n + 1) with 0-based ranks k. Balanced +-1 targets give 1.
    """
    y = np.sort(np.asarray(y.detach().cpu() if torch.is_tensor(y) else y, dtype=np.float64).reshape(-1))
    n = y.size
    if n == 0:
        raise ValueError("fpl_lower_bound needs at least one target")
    k = np.arange(n)
    return float(2.0 * np.sum(y * (2 * k - n + 1)) / (n * n))
