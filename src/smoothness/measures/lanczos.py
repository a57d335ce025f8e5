"""The Lanczos iteration on a symmetric linear operator given by its matrix-vector product, with full
reorthogonalization (Golub & Van Loan, Matrix Computations, sec. 10.1), and what is read from its tridiagonal
matrix T: Ritz values and their residual norms (the top eigenvalues), and the Gauss quadrature nodes and weights of
stochastic Lanczos quadrature (the eigenvalue density; Ghorbani, Krishnan & Xiao, ICML 2019, sec. 3; Ubaru, Chen &
Saad, SIMAX 2017). Pure functions of tensors; the operator is any callable v -> A v on flat float vectors."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch


def tridiagonal(alpha: list[float], beta: list[float]) -> torch.Tensor:
    """T [m, m] in float64 from its diagonal alpha [m] and off-diagonal beta [m - 1]."""
    m = len(alpha)
    t = torch.diag(torch.tensor(alpha, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(beta[:m - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return t


def ritz(alpha: list[float], beta: list[float], next_beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values [m] ascending, residual norms [m], first components of the eigenvectors of T [m]) after m steps.
    The residual ||A y - theta y|| of the Ritz pair (theta, y) is next_beta |s_m| (s the eigenvector of T): for a
    symmetric A some eigenvalue lies within it of theta. A T that is not finite gives NaN for all three."""
    t = tridiagonal(alpha, beta)
    if not bool(torch.isfinite(t).all()):
        nan = torch.full((len(alpha),), math.nan, dtype=torch.float64)
        return nan, nan.clone(), nan.clone()
    values, vectors = torch.linalg.eigh(t)
    return values, next_beta * vectors[-1].abs(), vectors[0]


def run(matvec: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor, steps: int,
        stop: Callable[[list[float], list[float], float], bool] | None = None,
        step_done: Callable[[], None] | None = None,
        basis: list[torch.Tensor] | None = None) -> tuple[list[float], list[float], float]:
    """Up to `steps` Lanczos steps from v0 (any nonzero vector): (alpha, beta, next_beta) of T, beta[k] coupling
    steps k and k + 1, next_beta the norm of the last residual. Every new vector is orthogonalized against all
    earlier ones (twice: classical Gram-Schmidt repeated), in float64, so that the Ritz values carry no spurious
    copies. Stops early when stop(alpha, beta, next_beta) says so, or when the Krylov space is exhausted
    (next_beta ~ 0: T's eigenvalues are then eigenvalues of A), or when A v is not finite (next_beta is then NaN,
    and ritz gives NaN). basis: an empty list that receives the m orthonormal
    Lanczos vectors Q (float64), for the Ritz vectors Q s."""
    q = (v0 / v0.norm()).double()
    basis = [] if basis is None else basis
    basis.append(q)
    alpha: list[float] = []
    beta: list[float] = []
    scale = 0.0
    for k in range(steps):
        w = matvec(q.to(v0.dtype)).double()
        a = float(q @ w)
        alpha.append(a)
        w = w - a * q - (beta[-1] * basis[-2] if beta else 0.0)
        stacked = torch.stack(basis)
        for _ in range(2):
            w = w - stacked.T @ (stacked @ w)
        b = float(w.norm())
        if not (math.isfinite(a) and math.isfinite(b)):
            alpha[-1] = math.nan
            return alpha, beta, math.nan
        scale = max(scale, abs(a), b)
        if step_done is not None:
            step_done()
        if b <= 1e-10 * max(scale, 1e-300) or k + 1 == steps or (stop is not None and stop(alpha, beta, b)):
            return alpha, beta, b
        beta.append(b)
        q = w / b
        basis.append(q)
    return alpha, beta, 0.0
