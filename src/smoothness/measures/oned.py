"""Exact smoothness in one input dimension, and the smoothest interpolant of a training set.

A one-hidden-layer ReLU net f(t) = sum_i v_i relu(w_i t + b_i) + c on the line is continuous and piecewise
linear. With p the input density, F its distribution function and w(t) = 2 F(t) (1 - F(t)) the probability that t
lies between two independent draws a, b ~ p, the paper's measures are weighted L1 norms of f' or f'':
    GN  = int |f'(t)| p(t) dt                         (eq. 3)
    FPL = E_ab TV(f on [a, b])  = int |f'(t)| w(t) dt   (eq. 6)
    GPL = E_ab TV(f' on [a, b]) = sum over kinks k of |jump of f' at k| w(t_k)   (eq. 11)
    WP  = sum_i |v_i| |w_i| >= TV(f') over the line    (eq. 13); the smallest WP of any network computing f is
          max(TV(f'), |f'(-inf) + f'(+inf)|) (Savarese, Evron, Soudry & Srebro, COLT 2019).
So the smallest value over all interpolants of (x_i, y_i) is a linear program, and several have closed forms
(smallest_*). Everything here is NumPy/SciPy on float64: the nets come in as arrays.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import optimize, sparse, special

from smoothness.data.lines import Density, LineTask


@dataclass(frozen=True)
class PiecewiseLinear:
    """f(t) = c + slope * t + sum_k jumps[k] relu(t - kinks[k]): kinks sorted and distinct, f'(-inf) = slope."""
    c: float
    slope: float
    kinks: np.ndarray
    jumps: np.ndarray

    def __call__(self, t):
        t = np.asarray(t, dtype=np.float64)
        return self.c + self.slope * t + (np.maximum(t[..., None] - self.kinks, 0.0) * self.jumps).sum(-1)

    @property
    def slopes(self) -> np.ndarray:
        """f' on the len(kinks) + 1 pieces, left to right."""
        return self.slope + np.concatenate([[0.0], np.cumsum(self.jumps)])

    def tv_derivative(self) -> float:
        """TV(f') over the line: the sum of |jumps|."""
        return float(np.abs(self.jumps).sum())

    @staticmethod
    def from_net(v, w, b, c=0.0) -> "PiecewiseLinear":
        """The function of a 1-h-1 ReLU net f(t) = sum_i v_i relu(w_i t + b_i) + c; units at one kink merge."""
        v, w, b = (np.asarray(z, np.float64).ravel() for z in (v, w, b))
        c = float(c) + float((v * np.maximum(b, 0.0))[w == 0].sum())
        on = w != 0
        v, w, b = v[on], w[on], b[on]
        k = -b / w
        jump = v * np.abs(w)                     # f' jumps by v |w| at k, whichever way the unit faces
        neg = w < 0                              # v |w| relu(k - t) = v |w| (relu(t - k) - t + k)
        slope = float(-(jump[neg]).sum())
        c += float((jump[neg] * k[neg]).sum())
        order = np.argsort(k, kind="stable")
        k, jump = k[order], jump[order]
        uk, start = np.unique(k, return_index=True)
        return PiecewiseLinear(c, slope, uk, np.add.reduceat(jump, start) if len(k) else jump)


# -- exact measures of a piecewise-linear function -------------------------------------------------
def gradient_norm(f: PiecewiseLinear, p: Density) -> float:
    """GN = int |f'| p (eq. 3), exactly."""
    F = np.concatenate([[0.0], p.cdf(f.kinks), [1.0]])
    return float((np.abs(f.slopes) * np.diff(F)).sum())


def function_path_length(f: PiecewiseLinear, p: Density) -> float:
    """FPL = int |f'| w (eq. 6 in one dimension), exactly (quadrature to 1e-11 for a Gaussian density)."""
    edges = np.concatenate([[-np.inf], f.kinks, [np.inf]])
    return float((np.abs(f.slopes) * p.int_between(edges[:-1], edges[1:])).sum())


def gradient_path_length(f: PiecewiseLinear, p: Density) -> float:
    """GPL = sum over kinks of |jump of f'| w(kink) (eq. 11 in one dimension), exactly."""
    return float((np.abs(f.jumps) * p.between(f.kinks)).sum())


def weights_product(v, w) -> float:
    """WP = sum_i |v_i| |w_i| of a 1-h-1 net (eq. 13)."""
    return float((np.abs(np.asarray(v, np.float64)) * np.abs(np.asarray(w, np.float64))).sum())


def smallest_weights_product_of(f: PiecewiseLinear) -> float:
    """The smallest WP of any 1-h-1 net computing f: max(TV(f'), |f'(-inf) + f'(+inf)|) (Savarese et al.)."""
    s = f.slopes
    return float(max(f.tv_derivative(), abs(s[0] + s[-1])))


def exact_measures(v, w, b, c, p: Density) -> dict[str, float]:
    """GN, FPL, GPL and WP of a 1-h-1 net, keyed as in the registry."""
    f = PiecewiseLinear.from_net(v, w, b, c)
    return {"gradient_norm": gradient_norm(f, p), "function_path_length": function_path_length(f, p),
            "gradient_path_length": gradient_path_length(f, p), "weights_product": weights_product(v, w)}


# -- the smoothest interpolant: closed forms ----------------------------------------------------------
def _data(x, y):
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if len(x) != len(y) or len(x) < 2:
        raise ValueError("need at least two points (x, y) of equal length")
    o = np.argsort(x, kind="stable")
    x, y = x[o], y[o]
    if np.any(np.diff(x) <= 0):
        raise ValueError("the inputs x must be distinct")
    return x, y


def secant_slopes(x, y) -> np.ndarray:
    """(y_i+1 - y_i) / (x_i+1 - x_i) of the points sorted by x."""
    x, y = _data(x, y)
    return np.diff(y) / np.diff(x)


def smallest_gradient_norm(x, y, p: Density) -> float:
    """inf GN over interpolants = sum_i |y_i+1 - y_i| min_[x_i, x_i+1] p: each change made by an ever steeper
    ramp where the density is smallest (an infimum, approached, not reached)."""
    x, y = _data(x, y)
    pmin = np.minimum(p.pdf(x[:-1]), p.pdf(x[1:]))   # both densities are unimodal: the minimum is at an end
    if p.kind == "uniform":
        pmin = np.full(len(x) - 1, 1.0 / (p.b - p.a))
    return float((np.abs(np.diff(y)) * pmin).sum())


def smallest_function_path_length(x, y, p: Density) -> float:
    """inf FPL over interpolants = sum_i |y_i+1 - y_i| min(w(x_i), w(x_i+1)) (w is unimodal): each change made
    by an ever steeper ramp next to the data point of smaller w (an infimum, approached, not reached)."""
    x, y = _data(x, y)
    return float((np.abs(np.diff(y)) * np.minimum(p.between(x[:-1]), p.between(x[1:]))).sum())


def smallest_tv_derivative(x, y) -> float:
    """min TV(f') over interpolants = sum |s_i+1 - s_i| over consecutive secant slopes (the linear spline)."""
    return float(np.abs(np.diff(secant_slopes(x, y))).sum())


def smallest_weights_product(x, y) -> float:
    """min WP over 1-h-1 nets that interpolate: with T the spline's TV(f') and S = s_1 + s_N-1 (end secant
    slopes), max(T, (T + |S|) / 2), reached by the spline with end slopes chosen so that TV and the end term
    balance (derivation in docs/oned.md)."""
    s = secant_slopes(x, y)
    t = float(np.abs(np.diff(s)).sum())
    return float(max(t, (t + abs(s[0] + s[-1])) / 2))


def spline_gradient_path_length(x, y, p: Density) -> float:
    """GPL of the interpolating linear spline: sum over the inner data points of w(x_i) |s_i - s_i-1|."""
    x, y = _data(x, y)
    return float((p.between(x[1:-1]) * np.abs(np.diff(np.diff(y) / np.diff(x)))).sum())


def concave_between(p: Density, lo: float, hi: float) -> bool:
    """Whether w = 2F(1 - F) is concave on [lo, hi]: always on the uniform density's support; for a Gaussian where
    |t - mean| <= z* sd, z* ~ 0.87 solving z (2 Phi(z) - 1) = 2 phi(z) (w'' <= 0 there)."""
    if p.kind == "uniform":
        return p.a <= lo and hi <= p.b
    return max(abs(lo - p.a), abs(hi - p.a)) <= _Z_CONCAVE * p.b


_Z_CONCAVE = optimize.brentq(
    lambda z: z * (2 * special.ndtr(z) - 1) - 2 * math.exp(-z * z / 2) / math.sqrt(2 * math.pi), 0.5, 1.5)


def gradient_path_length_lower(x, y, p: Density, grid: np.ndarray | None = None) -> float:
    """A lower bound of inf GPL over interpolants, by LP duality (docs/oned.md): for every H that is linear between
    consecutive data points, 0 at x_1 and x_N and |H| <= w everywhere, sum_i (H(x_i+1) - H(x_i)) s_i <= GPL(f) of
    every interpolant f. The LP maximizes over the H_i = H(x_i), with |H| <= w imposed at the grid points against
    the smallest w of the two neighbouring cells, which makes |H| <= w hold on every cell (w is unimodal)."""
    x, y = _data(x, y)
    n = len(x)
    if n < 3:
        return 0.0
    s = np.diff(y) / np.diff(x)
    g = grid_for(x, p) if grid is None else np.unique(np.concatenate([np.asarray(grid, np.float64), x]))
    g = g[(g >= x[0]) & (g <= x[-1])]
    wg = p.between(g)
    low = np.minimum(wg, np.minimum(np.concatenate([wg[1:], wg[-1:]]), np.concatenate([wg[:1], wg[:-1]])))
    i = np.clip(np.searchsorted(x, g, side="right") - 1, 0, n - 2)      # g lies in [x_i, x_i+1]
    theta = (g - x[i]) / (x[i + 1] - x[i])
    # H(g) = (1 - theta) H_i + theta H_i+1, with unknowns H_1 .. H_n-2 (0-based; H_0 = H_n-1 = 0)
    rows = np.arange(len(g))
    r, c, v = [], [], []
    for col, coef in ((i, 1 - theta), (i + 1, theta)):
        inner = (col >= 1) & (col <= n - 2)
        r.append(rows[inner])
        c.append(col[inner] - 1)
        v.append(coef[inner])
    A = sparse.csr_matrix((np.concatenate(v), (np.concatenate(r), np.concatenate(c))), shape=(len(g), n - 2))
    cost = -(s[:-1] - s[1:])          # maximize sum_i H_i (s_i-1 - s_i)
    res = _linprog(cost, A_ub=sparse.vstack([A, -A]).tocsr(), b_ub=np.concatenate([low, low]),
                   bounds=[(None, None)] * (n - 2))
    return float(-res.fun)


def _linprog(cost, **kw):
    """SciPy's HiGHS; where its simplex stops on numerical trouble (close data points make the rows badly scaled),
    its interior-point method with crossover."""
    for method in ("highs", "highs-ipm"):
        res = optimize.linprog(cost, method=method, **kw)
        if res.status == 0:
            return res
    raise RuntimeError(f"the linear program failed: {res.message}")


def smallest_gradient_path_length(x, y, p: Density, grid: np.ndarray | None = None) -> tuple[float, float]:
    """(lower, upper) bounds of inf GPL over interpolants. Where w is concave on [x_1, x_N] (always for the
    uniform density) the linear spline is optimal and both equal its GPL: the dual H_i = w(x_i) sign(s_i-1 - s_i)
    is feasible because w minus a linear function is concave. Otherwise the upper bound is the smaller of the
    spline's GPL and the grid LP (smallest_on_grid), the lower bound gradient_path_length_lower."""
    x, y = _data(x, y)
    spline = spline_gradient_path_length(x, y, p)
    if concave_between(p, x[0], x[-1]):
        return spline, spline
    upper = min(spline, smallest_on_grid("gradient_path_length", x, y, p, grid)[0])
    return min(gradient_path_length_lower(x, y, p, grid), upper), upper


def linear_spline(x, y, left: float | None = None, right: float | None = None) -> PiecewiseLinear:
    """The interpolating linear spline, extended with the end secant slopes (or the given end slopes)."""
    x, y = _data(x, y)
    s = np.diff(y) / np.diff(x)
    left, right = s[0] if left is None else left, s[-1] if right is None else right
    slopes = np.concatenate([[left], s, [right]])
    return PiecewiseLinear(float(y[0] - left * x[0]), float(left), x.copy(), np.diff(slopes))


# -- the smoothest interpolant: a linear program on a grid -------------------------------------------
def grid_for(x, p: Density, cells: int = 4000, margin: float = 0.5) -> np.ndarray:
    """A sorted grid holding the data points, about `cells` cells over the data's range widened by `margin` of
    it on each side."""
    x = np.sort(np.asarray(x, np.float64))
    span = x[-1] - x[0]
    lo, hi = x[0] - margin * span, x[-1] + margin * span
    return np.unique(np.concatenate([np.linspace(lo, hi, cells + 1), x]))


MEASURES_1D = ("gradient_norm", "function_path_length", "gradient_path_length", "weights_product")


def smallest_on_grid(measure: str, x, y, p: Density, grid: np.ndarray | None = None) -> tuple[float, PiecewiseLinear]:
    """min of `measure` over interpolants with kinks on the grid, by linear programming (HiGHS), and that
    interpolant. The grid restricts the kinks, so the value is an upper bound of the infimum over all
    interpolants that decreases as the grid is refined (see docs/oned.md for the tolerance)."""
    if measure not in MEASURES_1D:
        raise ValueError(f"unknown measure {measure!r}; choose one of: {', '.join(MEASURES_1D)}")
    x, y = _data(x, y)
    g = grid_for(x, p) if grid is None else np.unique(np.concatenate([np.asarray(grid, np.float64), x]))
    K = len(g) - 1                 # cells; unknowns: u0, sigma_0..K-1, a (left slope), b (right slope), then |.|
    h = np.diff(g)
    at = np.searchsorted(g, x)     # grid index of each data point
    # interpolation: u0 + sum_{l < j} sigma_l h_l = y at each data index j
    rows = sparse.csr_matrix((np.arange(K)[None, :] < at[:, None]) * h)
    n_lin = 1 + K + 2
    eq = sparse.hstack([sparse.csr_matrix(np.ones((len(x), 1))), rows, sparse.csr_matrix((len(x), 2))])
    # expressions whose absolute values are weighted: E z, weights c_abs
    I = sparse.identity(K, format="csr")
    if measure in ("gradient_norm", "function_path_length"):
        if measure == "gradient_norm":
            cw = np.diff(p.cdf(g))
            tails = (float(p.cdf(g[0])), float(1 - p.cdf(g[-1])))
        else:
            cw = p.cell_between(g)
            tails = (float(p.int_between(-np.inf, g[0])), float(p.int_between(g[-1], np.inf)))
        E = sparse.hstack([sparse.csr_matrix((K + 2, 1)),
                           sparse.vstack([I, sparse.csr_matrix((2, K))]),
                           sparse.vstack([sparse.csr_matrix((K, 2)), sparse.identity(2)])]).tocsr()
        wts = np.concatenate([cw, tails])   # |sigma_j| times the mass of p (or of w) in its cell
    else:
        # slope changes: sigma_0 - a, sigma_j - sigma_j-1, b - sigma_K-1
        D = sparse.diags([np.ones(K - 1), -np.ones(K - 1)], [1, 0], shape=(K - 1, K))
        unit = lambda col, v: sparse.csr_matrix(([v], ([0], [col])), shape=(1, K))   # noqa: E731
        first = sparse.hstack([unit(0, 1.0), sparse.csr_matrix([[-1.0, 0.0]])])       # sigma_0 - a
        last = sparse.hstack([unit(K - 1, -1.0), sparse.csr_matrix([[0.0, 1.0]])])    # b - sigma_K-1
        E = sparse.hstack([sparse.csr_matrix((K + 1, 1)),
                           sparse.vstack([sparse.hstack([D, sparse.csr_matrix((K - 1, 2))]), first, last])]).tocsr()
        wts = (np.concatenate([p.between(g[1:-1]), [p.between(g[0]), p.between(g[-1])]])
               if measure == "gradient_path_length" else np.ones(K + 1))
    m = E.shape[0]
    extra = 1 if measure == "weights_product" else 0      # epigraph variable z >= TV, z >= +-(a + b)
    n = n_lin + m + extra
    # |E z| <= e  <=>  E z - e <= 0 and -E z - e <= 0
    Ie = sparse.identity(m, format="csr")
    pad = sparse.csr_matrix((m, extra))
    A_ub = sparse.vstack([sparse.hstack([E, -Ie, pad]), sparse.hstack([-E, -Ie, pad])]).tocsr()
    b_ub = np.zeros(2 * m)
    cost = np.zeros(n)
    if measure == "weights_product":
        ab = np.zeros((2, n))
        ab[0, n_lin - 2:n_lin] = 1.0
        ab[1, n_lin - 2:n_lin] = -1.0
        ab[:, -1] = -1.0
        tv = np.zeros((1, n))
        tv[0, n_lin:n_lin + m] = 1.0
        tv[0, -1] = -1.0
        A_ub = sparse.vstack([A_ub, sparse.csr_matrix(ab), sparse.csr_matrix(tv)]).tocsr()
        b_ub = np.concatenate([b_ub, np.zeros(3)])
        cost[-1] = 1.0
    else:
        cost[n_lin:n_lin + m] = wts
    A_eq = sparse.hstack([eq, sparse.csr_matrix((len(x), m + extra))]).tocsr()
    bounds = [(None, None)] * n_lin + [(0, None)] * (m + extra)
    z = _linprog(cost, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=y, bounds=bounds).x
    sig, a, b = z[1:K + 1], z[K + 1], z[K + 2]
    slopes = np.concatenate([[a], sig, [b]])
    jumps = np.diff(slopes)
    keep = np.abs(jumps) > 1e-12 * max(1.0, np.abs(slopes).max())
    f = PiecewiseLinear(float(z[0] - a * g[0]), float(a), g[keep], jumps[keep])
    return float(cost @ z), f


# -- exact measures and the smoothest interpolant, per trained model (docs/oned.md) ---------------------
EXACT = {k: "exact_" + k for k in MEASURES_1D}       # S(f) of the trained net, from its kinks
SMALLEST = {k: "min_" + k for k in MEASURES_1D}      # S_min: the smallest S over interpolants of its training set
THROUGH = {k: "min_through_" + k for k in MEASURES_1D}   # the smallest S of a function through the net's own values
LOWER = "gradient_path_length_lower"   # GPL's S_min is bracketed: min_* is the upper end, min_*_lower the lower


def net_arrays(params) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """v [M, h], w [M, h], b [M, h] and c [M] of a stack of 1-h-1 nets f(t) = sum_i v_i relu(w_i t + b_i) + c,
    float64 on the CPU."""
    w, b = params.weights[0][:, :, 0].double().cpu().numpy(), params.biases[0].double().cpu().numpy()
    v, c = params.weights[1][:, 0, :].double().cpu().numpy(), params.biases[1][:, 0].double().cpu().numpy()
    return v, w, b, c


def net_function(params, m: int = 0) -> PiecewiseLinear:
    """The function of model m of a stack of 1-h-1 nets, as an oned.PiecewiseLinear."""
    return PiecewiseLinear.from_net(*(a[m] for a in net_arrays(params)))


def exact_of(params, task: LineTask, train_idx: list[torch.Tensor]) -> list[dict[str, float]]:
    """For every model of a stack of 1-h-1 nets: the exact GN, FPL, GPL and WP on the task's density (exact_*), and
    the smallest value of each over the functions that pass through the net's own values at its training inputs
    (min_through_*), so that exact / min_through >= 1 whether or not the net interpolates exactly. Deeper nets
    get NaN (their exact measures are not built)."""
    if params.depth != 1:
        return [dict.fromkeys(_EXACT_KEYS, float("nan")) for _ in range(params.n_models)]
    v, w, b, c = net_arrays(params)
    out = []
    for m in range(params.n_models):
        if not all(np.isfinite(a[m]).all() for a in (w, b, v, c)):
            out.append(dict.fromkeys(_EXACT_KEYS, float("nan")))
            continue
        vals = exact_measures(v[m], w[m], b[m], c[m], task.density)
        x = task.pool_x[train_idx[m], 0].double().numpy()
        through = smallest_values(x, PiecewiseLinear.from_net(v[m], w[m], b[m], c[m])(x), task.density)
        out.append({**{EXACT[k]: vals[k] for k in MEASURES_1D}, **_keyed(through, "min_through_")})
    return out


_EXACT_KEYS = [*EXACT.values(), *THROUGH.values(), "min_through_" + LOWER]
# Every record key of the 1-D tasks' measures (the exact ones of the net and S_min of its training set).
RECORD_KEYS = (*_EXACT_KEYS, *SMALLEST.values(), "min_" + LOWER)


def _keyed(values: dict[str, float], prefix: str) -> dict[str, float]:
    return {prefix + k: v for k, v in values.items()}


def smallest_values(x, y, p: Density) -> dict[str, float]:
    """S_min of each measure over the interpolants of (x, y): the closed forms for GN and FPL (infima) and WP; for
    GPL the upper end of oned.smallest_gradient_path_length's bracket (exact where w is concave over the data,
    as for the uniform density), and its lower end under gradient_path_length_lower."""
    lower, upper = smallest_gradient_path_length(x, y, p)
    return {"gradient_norm": smallest_gradient_norm(x, y, p),
            "function_path_length": smallest_function_path_length(x, y, p),
            "gradient_path_length": upper, "weights_product": smallest_weights_product(x, y), LOWER: lower}


def smallest_of(task: LineTask, train_idx: torch.Tensor) -> dict[str, float]:
    """S_min of each measure over the interpolants of the training set's targets, keyed min_* (smallest_values)."""
    key = (task.source, tuple(train_idx.tolist()))
    if key not in _SMALLEST:
        x, y = task.pool_x[train_idx, 0].double().numpy(), task.pool_y[train_idx].double().numpy()
        _SMALLEST[key] = _keyed(smallest_values(x, y, task.density), "min_")
    return dict(_SMALLEST[key])


_SMALLEST: dict[tuple, dict[str, float]] = {}
