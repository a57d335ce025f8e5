"""The one result type of every measure of one model: the value with its standard error and the number of samples
behind it. An Estimate is a float (the value), so it prints, compares and computes as one; its standard error and
sample count ride along. A value computed exactly (WP, the path norm, a certified bound) has a standard error of 0
and n = 0.

A Monte Carlo estimate is the mean of n independent draws (points, segments, probe vectors); its standard error is
their sample standard deviation over sqrt(n) (mean_and_se), so that about 95% of the intervals value ± 1.96 se hold
the quantity estimated (tests/project/test_estimates.py checks this coverage where the exact value is known).
"""
from __future__ import annotations

import math

import torch


class Estimate(float):
    """A measured value (the float itself) with its standard error `se` and sample count `n` (0: exact)."""

    __slots__ = ("se", "n")

    def __new__(cls, value, se: float = 0.0, n: int = 0):
        obj = float.__new__(cls, float(value))
        obj.se = float(se)
        obj.n = int(n)
        return obj

    @property
    def value(self) -> float:
        """The value as a plain float."""
        return float(self)

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """value ± z se (z = 1.96: the 95% interval of a normal estimate)."""
        return float(self) - z * self.se, float(self) + z * self.se

    def as_dict(self) -> dict:
        """{'value', 'se', 'n'}, for JSON."""
        return {"value": float(self), "se": self.se, "n": self.n}

    def __repr__(self) -> str:
        if self.n == 0 and self.se == 0:
            return f"Estimate({float(self)!r}, exact)"
        return f"Estimate({float(self)!r}, se={self.se!r}, n={self.n})"

    def __str__(self) -> str:
        if self.se == 0 or math.isnan(self.se):
            return f"{float(self):.6g}"
        return f"{float(self):.6g} ± {self.se:.2g}"

    def __reduce__(self):
        return Estimate, (float(self), self.se, self.n)


def exact(value) -> Estimate:
    """A value computed exactly: standard error 0, no samples."""
    return Estimate(value, 0.0, 0)


def mean_and_se(total: torch.Tensor, total_sq: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and its standard error (sample standard deviation / sqrt(n)) of n draws per model from their sum and
    sum of squares (accumulate both in float64). [M] each; the standard error is NaN for n < 2."""
    total, total_sq = total.double(), total_sq.double()
    mean = total / n
    if n < 2:
        return mean, torch.full_like(mean, float("nan"))
    var = ((total_sq - n * mean * mean) / (n - 1)).clamp_min(0.0)
    return mean, (var / n).sqrt()
