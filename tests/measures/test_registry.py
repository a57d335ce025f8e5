"""Common tests over the measure registry (in the style of scikit-learn's test_common.py): every measure in
registry.REGISTRY is batched, independent of chunking, of point order where it should be, and of the sign of f
where it should be. That every measure is recorded and reported is tested on a real run in test_report.py."""
import pytest
import torch

from smoothness import models
from smoothness.analysis import tables as analysis
from smoothness.analysis import verdict
from smoothness.measures import inputspace as ins
from smoothness.measures import registry
from smoothness.training import regularizers

KEYS = [m.key for m in registry.REGISTRY]


def compute(key: str, p: models.MLPStack, x: torch.Tensor, y: torch.Tensor, seeds=None, column=None) -> torch.Tensor:
    """Measure key of every model of p [M] at points x [n, d] with labels y [n], as the pipeline computes it (the
    registry's own functions: measure_stack at points, parameter_measures on a training set); seeds: the models'
    initialization seeds (default 0..M-1, alpha 1)."""
    m = registry.get(key)
    if m.stack:
        return registry.measure_stack(p, x, which=(key,), segments=23, points=7, seed=3)[key]
    n = p.n_models
    seeds = torch.arange(n) if seeds is None else torch.as_tensor(seeds)
    cols = registry.parameter_measures(p, x.expand(n, -1, -1), y.expand(n, -1), batch_size=8, seed=3,
                                       init_seeds=seeds, alphas=torch.ones(n, dtype=torch.float64),
                                       options={"sharpness_iters": 300, "trace_probes": 64})
    return cols[column or key]


@pytest.fixture
def problem():
    p = models.init_mlp([0, 1, 2], (5, 9, 1), alpha=1.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 5, generator=g)
    y = torch.where(torch.rand(30, generator=g) < 0.5, -1.0, 1.0)
    return p, x, y


def test_the_registry_is_one_consistent_table():
    assert len(set(KEYS)) == len(KEYS)
    assert len({m.short for m in registry.REGISTRY}) == len(KEYS)
    for m in registry.REGISTRY:
        assert m.space in (registry.INPUT, registry.PARAMETER) and m.depth in (registry.ANY_DEPTH, registry.ONE_HIDDEN)
        assert m.equation and m.label
        assert m.regularizer is None or m.regularizer in regularizers.REGULARIZERS
        assert m.stands_in_for is None or m.stands_in_for in registry.BY_KEY
        assert not m.sampled or m.stack
        if m.paper:  # the paper's values are there for the verdict
            assert m.key in analysis.PAPER_TABLE1 and m.key in analysis.PAPER_TABLE2 and m.table1
    assert set(regularizers.REGULARIZERS) == {"none", *registry.regularized_measure()}
    assert set(registry.MEASURES) == set(registry.keys(stack=True))
    assert verdict.MEASURES == ("GN", "FPL", "GPL", "WP")
    assert registry.by_short("PN").key == "path_norm" and registry.get("weights_product").short == "WP"
    with pytest.raises(ValueError, match="known: gradient_norm"):
        registry.get("gradient_nrom")


def test_a_stand_in_is_shown_only_where_its_measure_is_missing():
    assert not registry.shown("path_norm", {"weights_product": True, "path_norm": True})
    assert registry.shown("weights_product", {"weights_product": True, "path_norm": True})
    assert registry.shown("path_norm", {"weights_product": False, "path_norm": True})
    assert not registry.shown("weights_product", {"weights_product": False, "path_norm": True})
    assert registry.shown("gradient_norm", {})


@pytest.mark.parametrize("key", KEYS)
def test_batched_equals_one_model_at_a_time(key, problem):
    p, x, y = problem
    together = compute(key, p, x, y)
    assert together.shape == (3,) and torch.isfinite(together).all()
    alone = torch.cat([compute(key, p.select([i]), x, y, seeds=[i]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("key", registry.keys(sampled=True))   # those that read points in chunks
def test_independent_of_chunking(key, problem, monkeypatch):
    p, x, y = problem
    full = compute(key, p, x, y)
    monkeypatch.setattr(ins, "CHUNK_ELEMENTS", 64)
    torch.testing.assert_close(compute(key, p, x, y), full, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("key", KEYS)
def test_point_order(key, problem):
    p, x, y = problem
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    a, b = compute(key, p, x, y), compute(key, p, x[perm], y[perm])
    if registry.get(key).point_order:   # segments / batches are drawn by index: same seed, other pairs
        assert not torch.allclose(a, b, rtol=1e-6)
        torch.testing.assert_close(compute(key, p, x, y), a, rtol=0, atol=0)   # but reproducible
    else:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("key", KEYS)
def test_sign_of_f(key, problem):
    """f -> -f (the output layer negated) leaves every smoothness measure unchanged; a loss-based measure is
    unchanged when the labels are negated with it."""
    p, x, y = problem
    neg = models.MLPStack(p.weights[:-1] + [-p.weights[-1]], p.biases[:-1] + [-p.biases[-1]])
    base = compute(key, p, x, y)
    if registry.get(key).from_init:   # a distance to the initial weights, which are not negated with f
        return
    if registry.get(key).sign_invariant:
        torch.testing.assert_close(compute(key, neg, x, y), base, rtol=1e-5, atol=1e-7)
    else:
        assert not torch.allclose(compute(key, neg, x, y), base, rtol=1e-3)
        other = compute(key, neg, x, -y)
        if f"{key}_se" in registry.get(key).columns:   # an estimate: its probes fall otherwise on negated weights
            se = torch.hypot(compute(key, p, x, y, column=f"{key}_se"), compute(key, neg, x, -y, column=f"{key}_se"))
            assert ((other - base).abs() <= 4 * se).all(), (other, base, se)
        else:
            torch.testing.assert_close(other, base, rtol=1e-5, atol=1e-7)


def test_each_measure_is_defined_for_the_depths_it_claims():
    deep = models.init_mlp([0, 1], (5, 6, 4, 1), alpha=1.0)
    x = torch.randn(20, 5)
    y = torch.ones(20)
    for key in KEYS:
        m = registry.get(key)
        if m.depth == registry.ANY_DEPTH:
            assert torch.isfinite(compute(key, deep, x, y)).all(), key
        else:   # measure_stack gives NaN for networks it is not defined for
            assert torch.isnan(compute(key, deep, x, y)).all(), key
