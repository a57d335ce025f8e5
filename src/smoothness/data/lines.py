"""One-dimensional regression tasks on the line (docs/oned.md): data sources for grids beside the MNIST ones.

A 1-D source is named by a spec string, `line-KIND` with optional `:key=value,...` settings:

    line-gp       a sample of a zero-mean Gaussian process, RBF kernel exp(-(s - t)^2 / (2 length_scale^2)),
                  drawn jointly at every pool and held-out input (exact: eigendecomposition of the kernel matrix)
    line-sine     sin(pi * freq * t)
    line-sign     sign(sin(pi * freq * t)): a +-1 labelling of the line with sign changes at the multiples of 1/freq

    settings      density=uniform|gaussian (uniform on [-1, 1], or normal with mean 0 and sd 0.5),
                  length_scale (gp; default 1), freq (sine, sign; default 1), task_seed (the inputs and the
                  GP sample; default 0), pool (training pool size; 1024), heldout (held-out points; 1000)

for example `line-gp:length_scale=0.1,density=gaussian`. The canonical spec (settings in the order above, defaults
left out) is what RunConfig.data and the results store hold. The pool and held-out inputs are independent draws
from the density; the training set of size n for a seed is the first n of a seeded random order of the pool,
so it is nested across n. The task object has the interface of data.BinaryTask. The inputs come from NumPy's
PCG64 generator and are the same everywhere; the GP values go through LAPACK's eigendecomposition and can differ
between machines in the last bits.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from scipy import integrate, special

from smoothness.errors import DataError
from smoothness.runtime import rng

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(12)


@dataclass(frozen=True)
class Density:
    """The input density on the line: uniform on [a, b], or Gaussian with mean a and standard deviation b."""
    kind: str = "uniform"
    a: float = -1.0
    b: float = 1.0

    def __post_init__(self):
        if self.kind not in ("uniform", "gaussian"):
            raise ValueError(f"unknown density {self.kind!r}; use uniform or gaussian")
        if not (math.isfinite(self.a) and math.isfinite(self.b)) or (self.b <= self.a if self.kind == "uniform"
                                                                    else self.b <= 0):
            raise ValueError(f"invalid {self.kind} density parameters ({self.a}, {self.b})")

    def pdf(self, t):
        """p(t)."""
        t = np.asarray(t, dtype=np.float64)
        if self.kind == "uniform":
            return np.where((t >= self.a) & (t <= self.b), 1.0 / (self.b - self.a), 0.0)
        z = (t - self.a) / self.b
        return np.exp(-0.5 * z * z) / (self.b * math.sqrt(2 * math.pi))

    def cdf(self, t):
        """F(t)."""
        t = np.asarray(t, dtype=np.float64)
        if self.kind == "uniform":
            return np.clip((t - self.a) / (self.b - self.a), 0.0, 1.0)
        return special.ndtr((t - self.a) / self.b)

    def between(self, t):
        """w(t) = 2 F(t) (1 - F(t)): the probability that t lies between two independent draws."""
        f = self.cdf(t)
        return 2.0 * f * (1.0 - f)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """n independent draws (NumPy's default generator with this seed)."""
        g = np.random.default_rng(seed)
        return g.uniform(self.a, self.b, n) if self.kind == "uniform" else g.normal(self.a, self.b, n)

    def int_between(self, lo, hi) -> np.ndarray:
        """int_lo^hi w(t) dt for arrays of bounds (finite or infinite)."""
        lo, hi = np.broadcast_arrays(np.asarray(lo, np.float64), np.asarray(hi, np.float64))
        if self.kind == "uniform":   # w is a quadratic in u = (t - a) / L on the support, 0 outside
            L = self.b - self.a
            prim = lambda t: L * (lambda u: u * u - 2 * u ** 3 / 3)(np.clip((t - self.a) / L, 0, 1))  # noqa: E731
            return prim(hi) - prim(lo)
        out = np.empty(lo.shape)
        for i, (l, h) in enumerate(zip(lo.ravel(), hi.ravel())):
            out.ravel()[i] = integrate.quad(self.between, l, h, epsabs=1e-13, epsrel=1e-11, limit=200)[0]
        return out

    def cell_between(self, g: np.ndarray) -> np.ndarray:
        """int of w over each cell [g_j, g_j+1] of a fine sorted grid (Gauss-Legendre, 12 nodes per cell)."""
        if self.kind == "uniform":
            return self.int_between(g[:-1], g[1:])
        mid, half = (g[1:] + g[:-1]) / 2, (g[1:] - g[:-1]) / 2
        return half * (self.between(mid[:, None] + half[:, None] * _GL_NODES) @ _GL_WEIGHTS)


PREFIX = "line-"
KINDS = ("gp", "sine", "sign")
DENSITIES = {"uniform": Density("uniform", -1.0, 1.0), "gaussian": Density("gaussian", 0.0, 0.5)}
PAIR = (0, 1)   # 1-D tasks have no digit pair; their configs and records carry this one


MAX_POINTS = 100_000     # pool and held-out points of a 1-D task, each
MAX_GP_POINTS = 8192     # pool + held-out of line-gp: its sample needs an eigendecomposition of that size


@dataclass(frozen=True)
class LineSpec:
    """A 1-D task: the target function and the input density (see the module docstring)."""

    kind: str = "gp"
    density: str = "uniform"
    length_scale: float = 1.0
    freq: float = 1.0
    task_seed: int = 0
    pool: int = 1024
    heldout: int = 1000

    def __post_init__(self):
        if self.kind not in KINDS:
            raise DataError(f"unknown 1-D task {PREFIX}{self.kind}; choose one of: "
                            + ", ".join(PREFIX + k for k in KINDS))
        if self.density not in DENSITIES:
            raise DataError(f"1-D task density must be one of {', '.join(DENSITIES)}, got {self.density!r}")
        for k in ("length_scale", "freq"):
            v = getattr(self, k)
            if not (math.isfinite(v) and v > 0):
                raise DataError(f"1-D task setting {k} must be a finite number > 0, got {v!r}")
        if self.pool < 2 or self.heldout < 2:
            raise DataError(f"1-D task pool and heldout must be >= 2, got {self.pool} and {self.heldout}")
        if max(self.pool, self.heldout) > MAX_POINTS:
            raise DataError(f"1-D task pool and heldout are at most {MAX_POINTS:,} points each, got {self.pool:,} and "
                            f"{self.heldout:,}")
        if self.kind == "gp" and self.pool + self.heldout > MAX_GP_POINTS:
            raise DataError(f"line-gp draws its sample at pool + heldout points jointly (an eigendecomposition of "
                            f"that many squared): at most {MAX_GP_POINTS:,}, got {self.pool + self.heldout:,}")
        rng.check_seed(self.task_seed, "task_seed")

    def canonical(self) -> str:
        """The spec string with the settings that differ from the defaults, in a fixed order."""
        default = LineSpec(self.kind)
        opts = [f"{f.name}={getattr(self, f.name)!r}".replace("'", "") for f in fields(self)[1:]
                if getattr(self, f.name) != getattr(default, f.name)]
        return PREFIX + self.kind + (":" + ",".join(opts) if opts else "")

    def target(self, t: np.ndarray) -> np.ndarray:
        """The deterministic targets (sine, sign) at inputs t."""
        s = np.sin(np.pi * self.freq * t)
        return s if self.kind == "sine" else np.where(s >= 0, 1.0, -1.0)


def is_line(source: str) -> bool:
    """Whether a data source name is a 1-D task spec."""
    return isinstance(source, str) and source.startswith(PREFIX)


def pair_label(source: str, pair, fmt: str = " {a}/{b}") -> str:
    """The pair of a record as fmt shows it, or "" for a 1-D task (which has no pair)."""
    return "" if is_line(source) else fmt.format(a=pair[0], b=pair[1])


def parse(source: str) -> LineSpec:
    """The LineSpec of a spec string; a DataError names what is wrong."""
    if not is_line(source):
        raise DataError(f"not a 1-D task spec: {source!r} (expected {PREFIX}KIND[:key=value,...])")
    kind, _, rest = source[len(PREFIX):].partition(":")
    kw: dict = {}
    types = {f.name: f.type for f in fields(LineSpec)}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        k, eq, v = (s.strip() for s in item.partition("="))
        if not eq or k not in types or k == "kind":
            raise DataError(f"{source!r}: bad setting {item!r}; settings are key=value with keys "
                            + ", ".join(n for n in types if n != "kind"))
        if k in kw:
            raise DataError(f"{source!r}: setting {k} given twice")
        try:
            kw[k] = {"str": str, "float": float, "int": int}[types[k]](v)
        except ValueError:
            raise DataError(f"{source!r}: setting {k}={v!r} is not a {types[k]}") from None
    return LineSpec(kind.strip(), **kw)


def canonical(source: str) -> str:
    """The canonical spec string of a 1-D source (for stable configuration keys)."""
    return parse(source).canonical()


@dataclass
class LineTask:
    """A 1-D regression task with the interface of data.BinaryTask (inputs [n, 1], targets [n])."""

    source: str
    spec: LineSpec
    pool_x: torch.Tensor      # [P, 1] float32
    pool_y: torch.Tensor      # [P] float32
    heldout_x: torch.Tensor   # [H, 1]
    heldout_y: torch.Tensor   # [H]
    pair: tuple[int, int] = PAIR

    @property
    def density(self) -> Density:
        """The input density (oned.Density)."""
        return DENSITIES[self.spec.density]

    def subset(self, n: int, seed: int) -> torch.Tensor:
        """Indices into the pool of the training set of size n: the first n of the seed's order of the pool."""
        P = self.pool_x.shape[0]
        if n < 2 or n > P:
            raise DataError(f"training size must be between 2 and the pool size {P} of {self.source}, got {n} "
                            f"(a larger pool: {self.source}{',' if ':' in self.source else ':'}pool=...)")
        order = rng.permutation_keys(torch.tensor([P]), P, int(seed), rng.STREAM_SUBSET, 0)[0]
        return order[:n]

    def measure_points(self, n: int) -> torch.Tensor:
        """The first n held-out points."""
        return self.heldout_x[:n]

    def train_points(self, train_idx: torch.Tensor, n: int) -> torch.Tensor:
        """Up to n training points (the first n of the training set) for the training-set measures."""
        return self.pool_x[train_idx[:n]]


def _gp_sample(t: np.ndarray, length_scale: float, g: np.random.Generator) -> np.ndarray:
    """One draw of the zero-mean GP with RBF kernel at the inputs t (eigendecomposition: the kernel matrix of
    many close inputs is singular to working precision, so negative rounding in its spectrum is clipped)."""
    d = t[:, None] - t[None, :]
    lam, u = np.linalg.eigh(np.exp(-0.5 * (d / length_scale) ** 2))
    return u @ (np.sqrt(np.clip(lam, 0.0, None)) * g.standard_normal(len(t)))


@functools.lru_cache(maxsize=16)
def _task(source: str) -> LineTask:
    spec = parse(source)
    g = np.random.default_rng([spec.task_seed, 17])
    p = DENSITIES[spec.density]
    t = p.sample(spec.pool + spec.heldout, seed=int(g.integers(1 << 32)))
    y = _gp_sample(t, spec.length_scale, g) if spec.kind == "gp" else spec.target(t)
    x32, y32 = torch.from_numpy(t.astype(np.float32))[:, None], torch.from_numpy(y.astype(np.float32))
    P = spec.pool
    return LineTask(spec.canonical(), spec, x32[:P], y32[:P], x32[P:], y32[P:])


def line_task(source: str) -> LineTask:
    """The 1-D task of a spec string (built once per canonical spec)."""
    return _task(canonical(source))


def with_settings(source: str, **settings) -> str:
    """The canonical spec of a source with some settings changed."""
    return replace(parse(source), **settings).canonical()
