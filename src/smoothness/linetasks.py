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

from . import rng
from .errors import DataError
from .oned import (MEASURES_1D, Density, PiecewiseLinear, exact_measures, smallest_function_path_length, smallest_gradient_norm,
                   smallest_gradient_path_length, smallest_weights_product)

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
