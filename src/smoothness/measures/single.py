"""The smoothness measures of one model, as a PyTorch user calls them (Volhejn & Lampert, sec. 3; lower is smoother).

f is any torch module (or callable) mapping inputs [n, *shape] (vectors, images [n, C, H, W], ...) to [n], [n, 1]
or [n, K] (anymodule.py: flattened inputs, Frobenius norms of Jacobians for K outputs, or one output or the top-two
margin; BatchNorm and Dropout in training mode are refused), or a ReLU MLP of this package (closed-form gradients).
The data is a tensor or array [n, ...], a DataLoader, or any iterable of batches (stream.py): sums over points are
taken batch by batch, so memory holds one batch (small ones read together up to MODULE_POINTS points; and, for
the path lengths, the segments' 2 x segments end points).

Every measure returns an Estimate (estimate.py): a float with its standard error `se` and sample count `n`. GN and
GN^2 are means over the points (se over the points, n points); FPL and GPL means over random segments (se over the
segments, n segments); WP, the path norm and a single segment's total variation are exact (se 0).

Each function checks what it is given before any work (checks.py): the points are dense, finite and floating
point, the model's output is one tensor with a row per point, the path lengths have two points at least and fit in
memory; a MeasureError names what is wrong. A model with non-finite parameters gets a warning and NaN.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import nn

from smoothness.errors import MeasureError, MeasureTypeError
from smoothness.measures import anymodule, checks, inputspace, lipbound, lipschitz, stream
from smoothness.measures.estimate import Estimate, exact, mean_and_se
from smoothness.runtime import precision
from smoothness.runtime.progress import Bar

PATHS = {"fpl": "function_path_length", "gpl": "gradient_path_length"}
MODULE_POINTS = 256   # points per forward/backward pass of a general module (bounds the memory of its activations)


def evaluator_for(f, x: torch.Tensor, output=None):
    """(ev, to_points): the evaluator of one model f (inputspace.Evaluator, M = 1) built from a first batch x, and
    the conversion of a batch [n, ...] to the evaluator's points [1, n, d]."""
    p = inputspace.relu_stack(f)
    if p is not None:
        if p.n_models != 1:
            raise MeasureError(f"f is a stack of {p.n_models} models; these functions measure one model "
                               "(smoothness.measures.measure_stack measures a stack at once)")
        if output not in (None, 0):
            raise MeasureError(f"output={output!r}: a ReLU MLP of this package has one output")
        ev, d = inputspace.evaluator(p), p.widths[0]

        def to_mlp_points(b):
            b = checks.points(stream.as_tensor(b)).to(device=ev.device, dtype=ev.dtype)
            if b.dim() != 2 or b.shape[1] != d:
                raise MeasureError(f"points of this MLP must be [n, {d}]; got a batch of shape {tuple(b.shape)}")
            return b[None]
        return ev, to_mlp_points
    if not callable(f):
        raise MeasureTypeError(f"expected a torch module or callable f: [n, ...] -> [n] or [n, K], got "
                               f"{type(f).__name__}")
    anymodule.check_mode(f)
    params = list(f.parameters()) if isinstance(f, nn.Module) else []
    dtype = params[0].dtype if params else torch.float32
    device = params[0].device if params else torch.device("cpu")
    x = checks.points(stream.as_tensor(x))
    if x.shape[0] == 0:
        raise MeasureError(f"points must be [n, ...] with n >= 1; got {tuple(x.shape)}")
    shape = tuple(x.shape[1:])

    def to_points(b):
        b = checks.points(stream.as_tensor(b)).to(device=device, dtype=dtype)
        if tuple(b.shape[1:]) != shape:
            raise MeasureError(f"a batch of points of shape {tuple(b.shape[1:])} after points of shape {shape}")
        return b.reshape(1, b.shape[0], -1)
    probe = to_points(x[:1])
    values, grads, k = anymodule.parts(f, shape, output, probe[0])
    return inputspace.Evaluator(values, grads, 1, dtype, device, outputs=k, max_points=MODULE_POINTS), to_points


class Reader:
    """Reads data batch by batch as points [1, n, d] of one model f, building f's evaluator from the first batch."""

    def __init__(self, f, output=None):
        self.f, self.output = f, output
        self.ev, self._to_points, self.example = None, None, None

    def points(self, x) -> torch.Tensor:
        """The batch x [n, ...] as points [1, n, d]."""
        if self.ev is None:
            self.ev, self._to_points = evaluator_for(self.f, x, self.output)
            self.example = stream.as_tensor(x)[:1].to(device=self.ev.device, dtype=self.ev.dtype)  # [1, ...]
        return self._to_points(x)

    def start(self, data) -> None:
        """Build f's evaluator from the first point of the data (the model's output and its failures checked)."""
        for x in stream.batches(data):
            if x.shape[0]:
                self.points(x[:1])
                return
        raise MeasureError("the data holds no points")

    def each(self, data, desc: str, progress=None):
        """Yield every batch of data as points [1, n, d], with a progress bar over the batches; a stream's small
        batches read together up to MODULE_POINTS points (stream.joined), as a tensor's points are."""
        total = len(data) if stream.is_stream(data) and hasattr(data, "__len__") else None
        with Bar(total, desc, "batch", progress) as bar:
            for x, _, k in stream.joined(((x, None) for x in stream.batches(data)), MODULE_POINTS):
                if x.shape[0]:
                    yield self.points(x)
                bar.update(k)
        if self.ev is None:
            raise MeasureError("the data holds no points")


def _points(data):
    """The data of an input-space measure checked before any work: a tensor's points at once (checks.points), a
    stream's batches as they are read."""
    data = stream.checked(data, "x")
    return data if stream.is_stream(data) else checks.points(data, "x")


def _gradient_norm(f, data, output, power: int, progress) -> Estimate:
    data = _points(data)
    if not checks.parameters_finite(f):
        return checks.not_computed()
    r = Reader(f, output)
    sums, n = None, 0
    with torch.no_grad():
        for x in r.each(data, "gradient norms", progress):
            got = inputspace.gradient_norm_sums(r.ev, x, power)
            sums = got if sums is None else tuple(a + b for a, b in zip(sums, got))
            n += x.shape[1]
    total, total64, sq = sums
    se = mean_and_se(total64, sq, n)[1]
    return Estimate(float((total / n)[0]), float(se[0]), n)


@precision.strict_fp32()
def gradient_norm(f, data, output=None, *, progress=None) -> Estimate:
    """Eq. 4: the mean over the points of the Euclidean norm of the input gradient of f (the Frobenius norm of the
    Jacobian for K outputs; output: None, an output index or 'margin', anymodule.py), with its standard error over
    the points. progress: see runtime.progress."""
    return _gradient_norm(f, data, output, 1, progress)


@precision.strict_fp32()
def gradient_norm_squared(f, data, output=None, *, progress=None) -> Estimate:
    """The mean over the points of the squared norm of the input gradient (GN^2), with its standard error."""
    return _gradient_norm(f, data, output, 2, progress)


@precision.strict_fp32()
def path_lengths(f, data, segments: int = inputspace.DEFAULT_SEGMENTS, points: int = inputspace.DEFAULT_POINTS,
                 seed: int = 0,
                 output=None, which=("fpl", "gpl"), *, progress=None) -> dict[str, Estimate]:
    """Eqs. 9-11: FPL ('fpl') and GPL ('gpl') in one pass over the same segments: the means over `segments`
    segments between random pairs of the points (drawn by index with the seed, so a DataLoader gives the value of
    the tensor of its points in its order; one that shuffles gives other segments each time) of the total
    variation of f, and of grad f, sampled at `points` points per segment; each with its standard error over the
    segments."""
    which = tuple(which)
    if not which or set(which) - set(PATHS):
        raise MeasureError(f"which must name some of {', '.join(PATHS)}; got {which!r}")
    inputspace.check_segments(segments, points)
    stream.check_reiterable(data, "the path lengths")
    data = _points(data)
    if not checks.parameters_finite(f):
        return {k: checks.not_computed() for k in which}
    n = stream.count(data)
    if n < 2:
        raise MeasureError(f"the path lengths need at least 2 points (their segments join random pairs of points); "
                           f"the data holds {n}")
    r = Reader(f, output)
    r.start(data)
    check_path_work(segments, points, r.example[0].numel(), r.ev.outputs, r.ev.dtype, r.ev.device)
    ia, ib = inputspace.segment_endpoints(n, segments, seed)
    ends = r.points(stream.gather(data, torch.cat([ia, ib])))          # [1, 2 S, d]
    with torch.no_grad(), Bar(segments, "path lengths", "segment", progress) as bar:
        got = inputspace.segment_path_lengths(r.ev, lambda i, j: (ends[:, i:j], ends[:, segments + i:segments + j]), 1,
                                       segments, points, which, ends.shape[2], progress=bar.update)
    return {k: Estimate(float(got[k][0]), float(got[k + "_se"][0]), segments) for k in which}


def check_path_work(segments: int, points: int, d: int, outputs: int, dtype, device) -> None:
    """A MeasureError, before any work, if the path lengths would need more memory than the device has to spare:
    the 2 x segments end points in dimension d, their indices, and one segment's points with their gradients
    (Jacobians of `outputs` rows)."""
    size = torch.empty((), dtype=dtype).element_size()
    need = 2 * segments * d * size + 16 * segments + 3 * points * d * outputs * size
    checks.fits(need, f"the path lengths' {segments:,} segments of {points:,} points in dimension {d:,}",
                "use fewer segments or points per segment", device)


def function_path_length(f, data, segments: int = inputspace.DEFAULT_SEGMENTS, points: int = inputspace.DEFAULT_POINTS,
                         seed: int = 0, output=None, *, progress=None) -> Estimate:
    """Eqs. 9-10: the mean sampled total variation of f on segments between random pairs of the points (with
    ||f(t_k) - f(t_k-1)||_2 for K outputs), with its standard error over the segments (path_lengths)."""
    return path_lengths(f, data, segments, points, seed, output, ("fpl",), progress=progress)["fpl"]


def gradient_path_length(f, data, segments: int = inputspace.DEFAULT_SEGMENTS, points: int = inputspace.DEFAULT_POINTS,
                         seed: int = 0, output=None, *, progress=None) -> Estimate:
    """Eq. 11, sampled like FPL: the mean total variation (L2 norm of differences) of grad f on segments (the
    Frobenius norm of the Jacobian's change for K outputs), with its standard error (path_lengths)."""
    return path_lengths(f, data, segments, points, seed, output, ("gpl",), progress=progress)["gpl"]


@precision.strict_fp32()
def segment_total_variation(f, a, b, points: int = inputspace.DEFAULT_POINTS, of: str = "function",
                            output=None) -> Estimate:
    """Eq. 10 on one segment a -> b: the sampled TV of f ('function') or of grad f ('gradient'); exact (se 0)."""
    if of not in ("function", "gradient"):
        raise MeasureError("of must be 'function' or 'gradient'")
    inputspace.check_segments(1, points)
    if not checks.parameters_finite(f):
        return checks.not_computed()
    r = Reader(f, output)
    ab = r.points(torch.stack([stream.as_tensor(a), stream.as_tensor(b)]))
    with torch.no_grad():
        pts = inputspace.segment_points(ab[:, 0], ab[:, 1], points)  # [1, P, d]
        if of == "gradient":
            return exact(inputspace.tv_of_gradients(r.ev.grads(pts))[0])
        return exact(inputspace.tv_of_outputs(r.ev.values(pts), r.ev.outputs > 1)[0])


def _of_stack(f, fn, requirement: str) -> Estimate:
    p = inputspace.relu_stack(f)
    if p is None:
        raise MeasureError(f"{fn.__name__[:-1]} is defined for {requirement}")
    if p.n_models != 1:
        raise MeasureError(f"f is a stack of {p.n_models} models; measure one (or call {fn.__name__} on the stack)")
    if not checks.parameters_finite(p):
        return checks.not_computed()
    with torch.no_grad():
        return exact(fn(p)[0])


@precision.strict_fp32()
def weights_product(f) -> Estimate:
    """Eq. 13 for a two-layer ReLU network (ReLUMLP, or nn.Sequential(Linear, ReLU, Linear)); exact."""
    return _of_stack(f, inputspace.weights_products, "two-layer ReLU networks only: pass a smoothness ReLUMLP or "
                                              "nn.Sequential(Linear, ReLU, Linear)")


@precision.strict_fp32()
def path_norm(f) -> Estimate:
    """The path norm (WP generalized to any depth, inputspace.path_norms) of a ReLU MLP (ReLUMLP or nn.Sequential
    of Linear and ReLU layers); exact."""
    return _of_stack(f, inputspace.path_norms, "ReLU MLPs: pass a smoothness ReLUMLP or an nn.Sequential of Linear and "
                                        "ReLU layers")


def scalar_output(f, data, output=None):
    """output if given, else None for a scalar f and 'margin' for K > 1 outputs (read from f on the first batch)."""
    if output is not None:
        return output
    r = Reader(f)
    r.start(data)
    return "margin" if r.ev.outputs > 1 else None


class _Top:
    """The running top-k points by gradient norm, and the box of all points, over batches."""

    def __init__(self, k: int):
        self.k, self.z, self.norms, self.lo, self.hi, self.n = k, None, None, None, None, 0

    def add(self, x: torch.Tensor, norms: torch.Tensor) -> None:
        lo, hi = x.min(1, keepdim=True).values, x.max(1, keepdim=True).values
        if self.z is not None:
            x, norms = torch.cat([self.z, x], 1), torch.cat([self.norms, norms], 1)
            lo, hi = torch.minimum(lo, self.lo), torch.maximum(hi, self.hi)
        self.z, self.norms = lipschitz.top_points(x, norms, self.k)
        self.lo, self.hi = lo, hi


@precision.strict_fp32()
def lipschitz_bounds(f, data, output=None, *, progress=None) -> tuple[Estimate, Estimate]:
    """(lower, upper) bounds of the Lipschitz constant sup ||grad f|| of a scalar f (output=k or 'margin' for K
    outputs). Both are bounds, not estimates of a mean: se 0; the lower bound's n is the number of points at which
    ||grad f|| was evaluated.

    lower: the largest ||grad f|| at the points; for a ReLU MLP raised by projected gradient ascent in the box of
    the points (lipschitz.py). upper: for a ReLU MLP the product of the layers' spectral norms; for any other
    module the product bound of lipbound.py (convolutions, BatchNorm in eval mode, pooling, common activations), or
    NaN with a warning naming the layer it does not cover."""
    data = _points(data)
    if not checks.parameters_finite(f):
        return checks.not_computed(), checks.not_computed()
    r = Reader(f, output)
    top, evaluated = _Top(lipschitz.STARTS), 0
    with torch.no_grad():
        for x in r.each(data, "Lipschitz bounds", progress):
            if r.ev.outputs > 1:
                raise MeasureError(f"f has {r.ev.outputs} outputs: the bounds are for a scalar function; pass "
                                   "output=k or output='margin'")
            top.add(x, inputspace.point_gradient_norms(r.ev, x))
            evaluated += x.shape[1]
        best = top.norms.max(1).values
        if r.ev.stack is not None:
            best = lipschitz.ascend(r.ev.stack, top.z, top.lo, top.hi, best)
            evaluated += lipschitz.STEPS * top.z.shape[1]
            upper = float(lipschitz.spectral_products(r.ev.stack)[0])
        else:
            upper = upper_bound(f, r.example, output)
    return Estimate(float(best[0]), 0.0, evaluated), exact(upper)


def upper_bound(f, example: torch.Tensor, output=None) -> float:
    """lipbound.upper_bound of f for inputs shaped like example [1, ...] (sqrt(2) times it for output='margin'),
    or NaN with a warning saying why there is none."""
    try:
        bound = lipbound.upper_bound(f, example)
    except lipbound.Unsupported as e:
        warnings.warn(f"no Lipschitz upper bound: {e}", stacklevel=3)
        return float("nan")
    return bound * math.sqrt(2.0) if output == "margin" else bound


def fpl_lower_bound(y) -> float:
    """Lower bound of FPL for interpolating models (paper sec. 4.3): E|y - y'| over i.i.d. pairs of the targets y.

    Exact mean over all n^2 ordered pairs (i = j included), in O(n log n): after sorting,
    sum_{i<j} (y_(j) - y_(i)) = sum_k y_(k) (2k - n + 1) with 0-based ranks k. Balanced +-1 targets give 1.
    """
    y = np.sort(np.asarray(y.detach().cpu() if torch.is_tensor(y) else y, dtype=np.float64).reshape(-1))
    n = y.size
    if n == 0:
        raise MeasureError("fpl_lower_bound needs at least one target")
    if not np.isfinite(y).all():
        raise MeasureError(f"y holds {int((~np.isfinite(y)).sum()):,} non-finite value(s): the bound is not a number")
    k = np.arange(n)
    return float(2.0 * np.sum(y * (2 * k - n + 1)) / (n * n))
