"""The standard errors are right: over many seeds, about 95% of the ±1.96 SE intervals of the Monte Carlo measures
(GN, FPL, GPL, Hutchinson's trace) hold the exact value, on nets where it is known (scripts/coverage.py, which
also draws the figure of docs/results/2026-12-02-coverage.md)."""
import importlib.util

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("coverage_script", ROOT / "scripts" / "coverage.py")
coverage = importlib.util.module_from_spec(spec)
spec.loader.exec_module(coverage)

SEEDS = 300


@pytest.mark.parametrize("name", coverage.EXPERIMENTS)
def test_about_95_percent_of_the_intervals_hold_the_exact_value(name):
    values, ses, truth = coverage.run(name, SEEDS)
    assert (ses > 0).all()
    got = coverage.coverage(values, ses, truth)
    # 0.95 +- 0.04 (about three binomial standard deviations at 300 seeds); a standard error off by 30% either way
    # gives a coverage outside (0.86 or 0.994)
    assert 0.91 <= got <= 0.99, got
    too_small = coverage.coverage(values, 0.7 * ses, truth)
    assert too_small < got
