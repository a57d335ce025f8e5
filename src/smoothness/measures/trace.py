"""The trace and the diagonal of a curvature operator (operators.py, gaussnewton.py, or any symmetric matrix behind
operators.MatrixOperator), each with its standard error, from matrix products only.

Trace, for a budget of m products:
- hutchinson: the mean of z . A z over m Rademacher vectors z (Girard 1989; Hutchinson 1989). se: the sample
  standard deviation of the m draws / sqrt(m).
- hutchpp: Hutch++ (Meyer, Musco, Musco & Woodruff, SOSA 2021): with s = m // 3, the exact trace of A on the span
  Q of A S for s random vectors S (s products for A S, s for A Q), plus Hutchinson's estimate on the rest, the
  mean of g' . A g' for the g = m - 2 s vectors g' = (I - Q Q^T) g. se: given Q, that mean is of g independent
  draws with expectation tr A - tr(Q^T A Q), so the estimate is unbiased whatever Q, and its variance is the mean
  over Q of the conditional variance, which the draws' sample variance / g estimates without bias (the
  estimator's own variance estimate; no repetition needed).
- xtrace: XTrace (Epperly, Tropp & Webber, SIMAX 2024), the exchangeable form of Hutch++: n = m / 2 test vectors w_i
  (n products for A W, n for A Q with Q the orthonormal basis of A W); estimate i is Hutch++ with the basis of the
  other n - 1 columns of A W and the single test vector w_i, and the estimate is their mean. se: the authors'
  error estimate (their xtrace.m), the standard deviation of the n estimates / sqrt(n). The n estimates are
  exchangeable, not independent (they share n - 2 basis vectors), so this se runs low: on three 300 x 300
  spectra (1/i, 1/i^2, uniform) with 60 products, the intervals +- 1.96 se held the trace in 85-87% of 300 seeds
  (Hutch++: 93-94%; Hutchinson, on the first: 95%). Independent repetitions instead cost the variance
  reduction: 3 runs of 20 products gave a larger error and, with 2 degrees of freedom, 80% coverage.

Diagonal: `diagonal`, the mean of z * A z over Rademacher vectors z (Bekas, Kokiopoulou & Saad, 2007), with a
standard error per entry; `exact_diagonal`, column by column (dim products; for small models).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from smoothness.errors import MeasureError
from smoothness.measures import checks, operators
from smoothness.measures.estimate import Estimate, exact, mean_and_se
from smoothness.runtime.progress import Bar

DEFAULT_PROBES = 100     # products of the trace and diagonal estimators
BLOCK = 64               # columns per matmat call (one pass over the data each)


def _products(op, seeds: list[int], rademacher: bool, bar) -> tuple[torch.Tensor, torch.Tensor]:
    """(Z [dim, k] float64, A Z [dim, k] float64) for the probe vectors of the given seeds, in blocks."""
    zs, azs = [], []
    for i in range(0, len(seeds), BLOCK):
        z = operators.probes(op.dim, seeds[i:i + BLOCK], rademacher, op.dtype, op.device)
        zs.append(z.double().cpu())
        azs.append(op.matmat(z).double().cpu())
        bar.update(z.shape[1])
    return torch.cat(zs, 1), torch.cat(azs, 1)


def _apply(op, V: torch.Tensor, bar) -> torch.Tensor:
    """A V (float64 [dim, k] in and out), in blocks."""
    out = []
    for i in range(0, V.shape[1], BLOCK):
        out.append(op.matmat(V[:, i:i + BLOCK].to(op.device, op.dtype)).double().cpu())
        bar.update(V[:, i:i + BLOCK].shape[1])
    return torch.cat(out, 1)


def _prepare(op) -> None:
    """The checks of op's data before any work (op.check(), where it has one)."""
    if hasattr(op, "check"):
        op.check()


def _finite(est: Estimate, what: str) -> Estimate:
    """est, or NaN with a warning where a product was not finite."""
    if math.isfinite(float(est)):
        return est
    checks.not_finite(what)
    return Estimate(math.nan, math.nan, est.n)


def _seeds(seed: int, k: int, offset: int = 0) -> list[int]:
    return [seed * 100003 + offset + i for i in range(k)]


def _check_budget(op, matvecs: int, least: int, what: str) -> None:
    if matvecs < least:
        raise MeasureError(f"{what} needs at least {least} products; got {matvecs}")
    if matvecs >= op.dim:
        raise MeasureError(f"{what} with {matvecs} products of a {op.dim}-dimensional operator: its exact trace "
                         f"takes {op.dim} (exact_diagonal)")


def hutchinson(op, probes: int = DEFAULT_PROBES, *, seed: int = 0, progress=None,
               desc: str = "trace (Hutchinson)") -> Estimate:
    """Hutchinson's estimate of tr A: the mean of z . A z over `probes` Rademacher vectors z (seeded seed x 100003
    + i), with its standard error over the probes (n = probes)."""
    if probes < 1:
        raise MeasureError(f"probes must be >= 1; got {probes}")
    _prepare(op)
    with Bar(probes, desc, "product", progress) as bar:
        z, az = _products(op, _seeds(seed, probes), True, bar)
    q = (z * az).sum(0)
    mean, se = mean_and_se(q.sum()[None], q.square().sum()[None], probes)
    return _finite(Estimate(float(mean[0]), float(se[0]), probes), "the trace")


def hutchpp(op, matvecs: int = DEFAULT_PROBES, *, seed: int = 0, progress=None,
            desc: str = "trace (Hutch++)") -> Estimate:
    """Hutch++'s estimate of tr A from `matvecs` products (at least 4, fewer than dim), with the standard error of
    its Hutchinson part (module docstring); n: the Hutchinson vectors g = matvecs - 2 (matvecs // 3)."""
    _check_budget(op, matvecs, 4, "Hutch++")
    s = matvecs // 3
    g = matvecs - 2 * s
    _prepare(op)
    with Bar(matvecs, desc, "product", progress) as bar:
        _, a_s = _products(op, _seeds(seed, s), True, bar)
        if not bool(torch.isfinite(a_s).all()):
            return _finite(Estimate(math.nan, math.nan, g), "the trace")
        q, _ = torch.linalg.qr(a_s)
        top = float((q * _apply(op, q, bar)).sum())
        gs = operators.probes(op.dim, _seeds(seed, g, s), True, torch.float64, "cpu")
        gs = gs - q @ (q.T @ gs)
        draws = (gs * _apply(op, gs, bar)).sum(0)
    mean, se = mean_and_se(draws.sum()[None], draws.square().sum()[None], g)
    return _finite(Estimate(top + float(mean[0]), float(se[0]), g), "the trace")


def _xtrace_estimates(op, n: int, seed: int, offset: int, bar) -> torch.Tensor:
    """The n exchangeable XTrace estimates [n] from n test vectors (seeds from seed, offset) and 2 n products."""
    w, y = _products(op, _seeds(seed, n, offset), True, bar)
    if not bool(torch.isfinite(y).all()):
        return torch.full((n,), math.nan, dtype=torch.float64)
    q, r = torch.linalg.qr(y)
    if not torch.isfinite(r).all() or torch.linalg.cond(r) > 1e12:
        raise MeasureError(f"XTrace needs {n} test vectors to span {n} directions of A's range; this operator has "
                         "a lower rank: use hutchpp")
    z = _apply(op, q, bar)                                     # A Q
    h = q.T @ z                                                # Q^T A Q
    s = torch.linalg.solve_triangular(r.T, torch.eye(n, dtype=r.dtype), upper=False)   # R^-T: column i is s_i
    s = s / s.norm(dim=0, keepdim=True)
    ests = torch.empty(n, dtype=torch.float64)
    base = float(h.trace())
    for i in range(n):
        si, wi = s[:, i], w[:, i]
        c = q.T @ wi
        c = c - si * (si @ c)            # Q_i Q_i^T = Q (I - s_i s_i^T) Q^T: Q_i spans A W without column i
        pw, apw = wi - q @ c, y[:, i] - z @ c                  # (I - Q_i Q_i^T) w_i and A times it
        ests[i] = base - float(si @ h @ si) + float(pw @ apw)
    return ests


def xtrace(op, matvecs: int = DEFAULT_PROBES, *, seed: int = 0, progress=None,
           desc: str = "trace (XTrace)") -> Estimate:
    """XTrace's estimate of tr A from `matvecs` products (even, at least 4, fewer than dim), with the authors'
    error estimate as its standard error (module docstring); n: the test vectors, matvecs / 2."""
    _check_budget(op, matvecs, 4, "XTrace")
    if matvecs % 2:
        raise MeasureError(f"XTrace takes an even number of products; got {matvecs}")
    n = matvecs // 2
    _prepare(op)
    with Bar(matvecs, desc, "product", progress) as bar:
        ests = _xtrace_estimates(op, n, seed, 0, bar)
    return _finite(Estimate(float(ests.mean()), float(ests.std() / math.sqrt(n)), n), "the trace")


TRACE_METHODS = {"hutchinson": hutchinson, "hutchpp": hutchpp, "xtrace": xtrace}


def trace(op, method: str = "hutchinson", matvecs: int = DEFAULT_PROBES, *, seed: int = 0, progress=None) -> Estimate:
    """tr A by `method` ('hutchinson', 'hutchpp', 'xtrace') from `matvecs` products, with its standard error."""
    if method not in TRACE_METHODS:
        raise MeasureError(f"unknown trace estimator {method!r}: choose one of {', '.join(TRACE_METHODS)}")
    return TRACE_METHODS[method](op, matvecs, seed=seed, progress=progress)


@dataclass
class Diagonal:
    """The diagonal of an operator: value [dim] and its per-entry standard error se [dim] (float64, CPU), n the
    probes (0: exact), and the trace (the sum, with its standard error over the same probes)."""

    value: torch.Tensor
    se: torch.Tensor
    n: int
    trace: Estimate


def diagonal(op, probes: int = DEFAULT_PROBES, *, seed: int = 0, progress=None,
             desc: str = "diagonal (Hutchinson)") -> Diagonal:
    """The diagonal of A estimated as the mean of z * A z over `probes` Rademacher vectors (seeded as hutchinson's,
    so its trace is hutchinson's estimate), each entry with its standard error over the probes."""
    if probes < 2:
        raise MeasureError(f"the diagonal's standard error needs probes >= 2; got {probes}")
    _prepare(op)
    with Bar(probes, desc, "product", progress) as bar:
        z, az = _products(op, _seeds(seed, probes), True, bar)
    draws = z * az                                             # [dim, probes]
    mean, se = mean_and_se(draws.sum(1), draws.square().sum(1), probes)
    q = draws.sum(0)
    t, tse = mean_and_se(q.sum()[None], q.square().sum()[None], probes)
    return Diagonal(mean, se, probes, Estimate(float(t[0]), float(tse[0]), probes))


def exact_diagonal(op, *, progress=None, desc: str = "diagonal (exact)") -> Diagonal:
    """The exact diagonal of A, column by column: dim products (refused above operators.DENSE_MAX_DIM)."""
    operators.check_dense(op.dim)
    _prepare(op)
    out = torch.empty(op.dim, dtype=torch.float64)
    with Bar(op.dim, desc, "product", progress) as bar:
        for i in range(0, op.dim, BLOCK):
            k = min(BLOCK, op.dim - i)
            e = torch.zeros(op.dim, k, dtype=op.dtype, device=op.device)
            e[torch.arange(i, i + k), torch.arange(k)] = 1
            out[i:i + k] = op.matmat(e).double().cpu()[torch.arange(i, i + k), torch.arange(k)]
            bar.update(k)
    return Diagonal(out, torch.zeros_like(out), 0, exact(float(out.sum())))
