"""The spectrum of a curvature operator (operators.py, gaussnewton.py, or any symmetric matrix behind
operators.MatrixOperator) by the Lanczos iteration of lanczos.py: the k largest or the k smallest (most negative)
eigenvalues, each with an error bound and, on request, its eigenvector; and the eigenvalue density by stochastic
Lanczos quadrature.

The error bound of an eigenvalue. A Ritz pair (theta, y) of Lanczos has the residual r = ||A y - theta y|| =
next_beta |s_m| (s the eigenvector of the tridiagonal T); some eigenvalue of A lies within r of theta. Once the
eigenvalue is separated from the rest of the spectrum by gap > 0 (the interval (theta - gap, theta + gap) holds
no other eigenvalue), its distance to theta is at most r^2 / gap (Kato-Temple; Parlett, The Symmetric Eigenvalue
Problem, sec. 11.7), far smaller than r at convergence. The gap is not known exactly: it is taken as the distance
to the nearest other Ritz value theta_j less that value's own residual r_j, min_j (|theta - theta_j| - r_j), which
is a lower bound on the true gap provided that each eigenvalue of A near theta has a Ritz value of its own (Lanczos
from a random start sees every eigenvector it is not orthogonal to; an eigenvalue whose eigenvector the start
nearly misses can be found late, and then the gap was overstated).

Both hold in exact arithmetic. The products are computed in the operator's dtype, whose rounding moves the
eigenvalues by about eps ||A|| (eps: the dtype's machine epsilon, 1.2e-7 for float32), whatever r says: on the
4,074-parameter CNN of docs/results/2026-12-06-curvature-peers.md the second eigenvalue of float32 Lanczos was off
by 4.4e-6 (0.53 eps ||A||) while min(r, r^2 / gap) was below 1e-6. So the bound reported is

    bound = min(r, r^2 / gap) + ROUNDING x eps x ||A||,

r^2 / gap only where the gap is positive, ||A|| estimated by the largest |Ritz value|; the rounding term is an
allowance from that measurement, not a proof. The Eigenvalue keeps r (`residual`) and the gap as well.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from smoothness.errors import MeasureError
from smoothness.measures import checks, lanczos
from smoothness.measures.estimate import Estimate
from smoothness.measures.operators import probes
from smoothness.runtime.progress import Bar

DEFAULT_STEPS = 100      # Lanczos steps at most (eigenvalues: until converged; density: exactly these)
DEFAULT_TOL = 1e-4       # eigenvalues: stop when every residual is below tol x the largest |Ritz value|
DEFAULT_RUNS = 4         # independent stochastic Lanczos quadrature runs of the density
ROUNDING = 10            # the rounding allowance of a bound, in units of eps x ||A|| (module docstring)


class Eigenvalue(Estimate):
    """An eigenvalue from the Lanczos iteration: the Ritz value (the float), with `residual` ||A y - value y|| (an
    eigenvalue lies within it in exact arithmetic), `bound` the error bound (min(residual, residual^2 / gap) plus
    a rounding allowance, see the module docstring), `gap` the estimated distance to the rest of the spectrum
    (NaN if unknown), n the Lanczos steps taken, `vector` the unit eigenvector (Ritz vector, flat [dim]) when asked
    for, else None; se 0 (it is not a Monte Carlo mean). A NaN residual means that no error bound was computed
    (the power iteration of the ReLU-MLP fast path)."""

    __slots__ = ("residual", "bound", "gap", "vector")

    def __new__(cls, value, residual: float, steps: int, bound: float | None = None, gap: float = float("nan"),
                vector: torch.Tensor | None = None):
        obj = Estimate.__new__(cls, value, 0.0, steps)
        obj.residual = float(residual)
        obj.bound = obj.residual if bound is None else float(bound)
        obj.gap = float(gap)
        obj.vector = vector
        return obj

    def as_dict(self) -> dict:
        return {**super().as_dict(), "residual": self.residual, "bound": self.bound}

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """value ± bound (an interval that holds an eigenvalue; z is not used)."""
        return float(self) - self.bound, float(self) + self.bound

    def __repr__(self) -> str:
        return (f"Eigenvalue({float(self)!r}, bound={self.bound:.3g}, residual={self.residual:.3g}, "
                f"gap={self.gap:.3g}, steps={self.n})")

    def __str__(self) -> str:
        if math.isnan(self.residual):
            return f"{float(self):.6g} (no error bound)"
        return f"{float(self):.6g} ± {self.bound:.2g} (residual {self.residual:.2g}, {self.n} Lanczos steps)"

    def __reduce__(self):
        return Eigenvalue, (float(self), self.residual, self.n, self.bound, self.gap, self.vector)


def bounds(values: torch.Tensor, residuals: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(bound, gap) [m] of each Ritz value (values ascending, their residuals) for products with machine epsilon
    eps: gap_i = min_{j != i} |theta_i - theta_j| - r_j (NaN for one value), bound_i = min(r_i, r_i^2 / gap_i) (the
    quotient where gap_i > 0) + ROUNDING x eps x max |theta|."""
    v, r = values.double(), residuals.double()
    rounding = ROUNDING * eps * float(v.abs().max())
    if v.numel() == 1:
        return r + rounding, torch.full_like(v, float("nan"))
    dist = (v[:, None] - v[None, :]).abs() - r[None, :]
    dist.fill_diagonal_(float("inf"))
    gap = dist.min(1).values
    quad = torch.where(gap > 0, r.square() / gap.clamp_min(1e-300), r)
    return torch.minimum(r, quad) + rounding, gap


def prepare(op, steps: int) -> None:
    """The checks before any work: op's data (op.check(), where it has one) and the memory of a Lanczos basis of
    `steps` vectors (float64, stacked once more at each step)."""
    if hasattr(op, "check"):
        op.check()
    checks.fits(2 * steps * op.dim * 8, f"the Lanczos basis of {steps:,} steps x {op.dim:,} parameters (float64)",
                "use fewer steps", op.device)


def _wanted(m: int, k: int, which: str) -> torch.Tensor:
    """Indices of the wanted Ritz values among m ascending ones, in the order reported."""
    k = min(k, m)
    return torch.arange(m - 1, m - 1 - k, -1) if which == "largest" else torch.arange(k)


def eigenpairs(op, k: int = 1, which: str = "largest", *, steps: int = DEFAULT_STEPS, tol: float = DEFAULT_TOL,
               seed: int = 0, vectors: bool = False, progress=None, desc: str = "eigenvalues") -> list[Eigenvalue]:
    """The k largest (which='largest', largest first) or k smallest (which='smallest', most negative first)
    eigenvalues of the symmetric operator op, by Lanczos with full reorthogonalization from a seeded Gaussian
    start, until the residual of each of the k is below tol x the largest |Ritz value| (an estimate of ||A||), or
    after `steps` products. Each is an Eigenvalue with its residual, gap and error bound (module docstring);
    vectors=True adds the unit eigenvectors (Ritz vectors) in op's dtype and device."""
    if which not in ("largest", "smallest"):
        raise MeasureError(f"which must be 'largest' or 'smallest'; got {which!r}")
    if k < 1:
        raise MeasureError(f"k must be >= 1; got {k}")
    steps = min(steps, op.dim)
    if k > steps:
        raise MeasureError(f"k = {k} eigenvalues need at least k Lanczos steps; the operator has dimension {op.dim} "
                         f"and steps = {steps}")
    prepare(op, steps)

    def converged(alpha, beta, b):
        if len(alpha) < k:
            return False
        values, res, _ = lanczos.ritz(alpha, beta, b)
        i = _wanted(len(alpha), k, which)
        return bool((res[i] <= tol * values.abs().max().clamp_min(1e-30)).all())

    basis: list[torch.Tensor] = []
    v0 = probes(op.dim, [seed], False, op.dtype, op.device)[:, 0]
    with torch.no_grad(), Bar(steps, desc, "product", progress) as bar:
        alpha, beta, b = lanczos.run(op.matvec, v0, steps, converged, bar.update, basis if vectors else None)
    if not math.isfinite(b):
        checks.not_finite("the eigenvalue" if k == 1 else f"each of the {k} eigenvalues")
        return [Eigenvalue(math.nan, math.nan, len(alpha)) for _ in range(k)]
    t_values, t_vectors = torch.linalg.eigh(lanczos.tridiagonal(alpha, beta))
    residuals = b * t_vectors[-1].abs()
    bound, gap = bounds(t_values, residuals, torch.finfo(op.dtype).eps)
    out = []
    for i in _wanted(len(alpha), k, which).tolist():
        vec = None
        if vectors:
            vec = (torch.stack(basis, 1) @ t_vectors[:, i]).to(op.device, op.dtype)
        out.append(Eigenvalue(float(t_values[i]), float(residuals[i]), len(alpha), float(bound[i]),
                              float(gap[i]), vec))
    return out


@dataclass
class Density:
    """The eigenvalue density by stochastic Lanczos quadrature: per run r, the Gauss quadrature nodes [runs, m]
    (Ritz values) and weights [runs, m] (summing to 1) of the spectral measure seen from a random vector; the
    density is their mean over runs, smoothed by a Gaussian kernel (curve). dim: the operator's dimension."""

    nodes: np.ndarray
    weights: np.ndarray
    dim: int

    @property
    def runs(self) -> int:
        return self.nodes.shape[0]

    def trace(self) -> Estimate:
        """tr A = dim x the mean of sum_i w_i theta_i (each run's z . A z / |z|^2 times dim), with its se over runs."""
        per_run = self.dim * (self.weights * self.nodes).sum(1)
        n = per_run.shape[0]
        return Estimate(float(per_run.mean()), float(per_run.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
                        n)

    def sigma(self) -> float:
        """The default width of the Gaussian kernel of curve(): 1% of the nodes' span (at least 1e-12 of their
        size)."""
        lo, hi = float(self.nodes.min()), float(self.nodes.max())
        return max(0.01 * (hi - lo), 1e-12 * max(abs(lo), abs(hi), 1.0))

    def curve(self, grid=None, sigma: float | None = None, points: int = 1000):
        """(grid, density, se): the density phi(t) = mean over runs of sum_i w_i N(t; theta_i, sigma^2) on the grid
        (default: `points` values spanning the nodes with 3 sigma margins; sigma default: self.sigma(), 1% of the
        nodes' span), with its standard error over the runs. It integrates to 1 over the real line."""
        lo, hi = float(self.nodes.min()), float(self.nodes.max())
        if sigma is None:
            sigma = self.sigma()
        grid = np.linspace(lo - 3 * sigma, hi + 3 * sigma, points) if grid is None else np.asarray(grid, float)
        kernel = np.exp(-0.5 * ((grid[None, None, :] - self.nodes[..., None]) / sigma) ** 2) / (sigma * math.sqrt(
            2 * math.pi))
        per_run = (self.weights[..., None] * kernel).sum(1)       # [runs, grid]
        se = per_run.std(0, ddof=1) / math.sqrt(self.runs) if self.runs > 1 else np.full(grid.shape, np.nan)
        return grid, per_run.mean(0), se


def density(op, *, runs: int = DEFAULT_RUNS, steps: int = DEFAULT_STEPS, seed: int = 0, progress=None,
            desc: str = "eigenvalue density") -> Density:
    """The eigenvalue density of the symmetric operator op by stochastic Lanczos quadrature (Ghorbani, Krishnan &
    Xiao, ICML 2019; Ubaru, Chen & Saad, SIMAX 2017): `runs` Lanczos runs of `steps` steps (at most op.dim) from
    Rademacher vectors seeded seed x 100003 + run; see Density."""
    if runs < 1:
        raise MeasureError(f"runs must be >= 1; got {runs}")
    steps = min(steps, op.dim)
    prepare(op, steps)
    nodes, weights = [], []
    with torch.no_grad(), Bar(runs * steps, desc, "product", progress) as bar:
        for r in range(runs):
            v0 = probes(op.dim, [seed * 100003 + r], True, op.dtype, op.device)[:, 0]
            alpha, beta, b = lanczos.run(op.matvec, v0, steps, step_done=bar.update)
            if not math.isfinite(b):
                checks.not_finite("the eigenvalue density")
                return Density(np.full((runs, steps), np.nan), np.full((runs, steps), np.nan), op.dim)
            values, _, first = lanczos.ritz(alpha, beta, b)
            pad = steps - len(alpha)   # an exhausted Krylov space: fewer nodes, padded with zero weight
            nodes.append(np.pad(values.numpy(), (0, pad), mode="edge"))
            weights.append(np.pad(first.square().numpy(), (0, pad)))
    return Density(np.stack(nodes), np.stack(weights), op.dim)
