"""The coverage of the ±1.96 standard-error intervals of the Monte Carlo measures, on nets where the exact value is
known: over many seeds, the fraction of intervals value ± 1.96 se that hold the exact value (about 0.95 for a
sound standard error). tests/project/test_estimates.py runs the same experiments; this script draws the figure.

    .venv/bin/python scripts/coverage.py --seeds 1000 --out docs/results/2026-12-02-coverage.png

The experiments (1-D inputs, so that the exact values are known in closed form):
  gradient_norm   f(x) = x^2 / 2, n = 30 points x ~ U(-1, 1) drawn per seed: E|f'(x)| = E|x| = 1/2
  fpl             f(x) = 3 x on 25 fixed points, 30 segments per seed: 3 x the mean of |x_i - x_j| over all pairs
  gpl             f(x) = x^2 / 2 on the same points and segments: the mean of |x_i - x_j| (grad f = x is monotone)
  hessian_trace   a 4-6-3 tanh classifier with cross-entropy on 40 points, 20 probes: the dense Hessian's trace
"""
from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from torch import nn

from smoothness import measures
from smoothness.measures import curvature


class Square(nn.Module):
    def forward(self, x):
        return 0.5 * x[:, 0] ** 2


class Line(nn.Module):
    def forward(self, x):
        return 3.0 * x[:, 0]


def _points(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _pair_mean(x: torch.Tensor) -> float:
    v = x[:, 0].double()
    return float((v[:, None] - v[None, :]).abs().mean())


def _classifier():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    params = dict(net.named_parameters())
    names, shapes = list(params), [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]
    theta = torch.cat([p.detach().reshape(-1) for p in params.values()]).double()
    double = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()

    def loss(t):
        ps = {k: v.reshape(s) for k, v, s in zip(names, t.split(sizes), shapes)}
        out = torch.func.functional_call(double, ps, (x.double(),))
        return nn.functional.cross_entropy(out, y)
    exact = float(torch.func.hessian(loss)(theta).diagonal().sum())
    return net, x, y, exact


def run(name: str, seeds: int, segments: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, standard errors, exact values) over `seeds` seeds of one experiment (see the module docstring);
    `segments` per FPL and GPL estimate."""
    vals, ses, truth = [], [], []
    if name == "hessian_trace":
        net, x, y, exact = _classifier()
    fixed = _points(25, 12345)
    for s in range(seeds):
        if name == "gradient_norm":
            e, t = measures.gradient_norm(Square(), _points(30, s), progress=False), 0.5
        elif name == "fpl":
            e = measures.function_path_length(Line(), fixed, segments=segments, points=10, seed=s, progress=False)
            t = 3.0 * _pair_mean(fixed)
        elif name == "gpl":
            e = measures.gradient_path_length(Square(), fixed, segments=segments, points=10, seed=s, progress=False)
            t = _pair_mean(fixed)
        elif name == "hessian_trace":
            e, t = curvature.hessian_trace(net, x, y, probes=20, seed=s, progress=False), exact
        else:
            raise ValueError(f"unknown experiment {name!r}")
        vals.append(float(e))
        ses.append(e.se)
        truth.append(t)
    return np.array(vals), np.array(ses), np.array(truth)


EXPERIMENTS = ("gradient_norm", "fpl", "gpl", "hessian_trace")


def coverage(values, ses, truth, z: float = 1.96) -> float:
    """The fraction of intervals value ± z se that hold the exact value."""
    return float(np.mean(np.abs(values - truth) <= z * ses))


def main(seeds: int, out: str | None, segments: int = 30) -> dict:
    got = {name: run(name, seeds, segments) for name in EXPERIMENTS}
    for name, (v, s, t) in got.items():
        print(f"{name:<15} coverage {coverage(v, s, t):.3f} over {seeds} seeds "
              f"(binomial 95% band for 0.95: ±{1.96 * math.sqrt(0.95 * 0.05 / seeds):.3f})")
    if out:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        names = list(got)
        cov = [coverage(*got[k]) for k in names]
        band = 1.96 * math.sqrt(0.95 * 0.05 / seeds)
        axes[0].bar(names, cov, color="C0")
        axes[0].axhspan(0.95 - band, 0.95 + band, color="C1", alpha=0.3, label="0.95 ± binomial 95% band")
        axes[0].set_ylim(0.8, 1.0)
        axes[0].set_ylabel("fraction of ±1.96 SE intervals\nholding the exact value")
        axes[0].legend(loc="lower right", fontsize=8)
        grid = np.linspace(-4, 4, 200)
        for k in names:
            v, s, t = got[k]
            z = np.sort((v - t) / s)
            axes[1].plot(z, np.arange(1, len(z) + 1) / len(z), label=k, lw=1)
        from scipy.stats import norm
        axes[1].plot(grid, norm.cdf(grid), "k--", lw=1, label="N(0, 1)")
        axes[1].set_xlim(-4, 4)
        axes[1].set_xlabel("(value - exact) / se")
        axes[1].set_ylabel("empirical CDF")
        axes[1].legend(fontsize=8)
        fig.suptitle(f"Standard errors of the Monte Carlo measures, {seeds} seeds each")
        fig.tight_layout()
        fig.savefig(out, dpi=130)
        print(f"figure: {out}")
    return got


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=1000)
    ap.add_argument("--out", default=None, metavar="PNG")
    ap.add_argument("--segments", type=int, default=30, help="segments per FPL and GPL estimate (default: 30)")
    a = ap.parse_args()
    main(a.seeds, a.out, a.segments)
