"""The measures of one model as a user calls them (measures/single.py): streamed data (a DataLoader, a list of
batches) gives the value of the tensor of its points; every result is an Estimate whose standard error is that of
the mean of its draws; exact measures carry se 0."""
import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from smoothness import measures
from smoothness.measures import inputspace
from smoothness.measures.estimate import Estimate, mean_and_se


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 4)).eval()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(37, 1, 8, 8, generator=g), torch.randint(0, 4, (37,), generator=g)


def loader(x, y, batch_size=8):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


@pytest.mark.parametrize("output", [None, 2, "margin"])
def test_a_dataloader_gives_the_value_of_the_tensor(cnn, images, output):
    x, y = images
    for fn in (measures.gradient_norm, measures.gradient_norm_squared):
        a, b = fn(cnn, x, output=output), fn(cnn, loader(x, y), output=output)
        assert b == pytest.approx(a, rel=1e-6) and b.se == pytest.approx(a.se, rel=1e-5) and a.n == b.n == 37
    a = measures.path_lengths(cnn, x, segments=30, points=20, output=output)
    b = measures.path_lengths(cnn, loader(x, y, 5), segments=30, points=20, output=output)
    batches = [xb for xb, _ in loader(x, y, 10)]   # a plain list of input batches
    c = measures.path_lengths(cnn, batches, segments=30, points=20, output=output)
    for k in ("fpl", "gpl"):
        assert b[k] == pytest.approx(a[k], rel=1e-6) and c[k] == pytest.approx(a[k], rel=1e-6)
        assert b[k].se == pytest.approx(a[k].se, rel=1e-5) and a[k].n == 30
    if output is None:
        return   # the bounds are of a scalar function
    lo_a, up_a = measures.lipschitz_bounds(cnn, x, output=output)
    lo_b, up_b = measures.lipschitz_bounds(cnn, loader(x, y), output=output)
    assert lo_b == pytest.approx(lo_a, rel=1e-6) and up_b == up_a and math.isfinite(up_a) and lo_a <= up_a


def test_the_standard_error_is_that_of_the_mean_over_points_and_segments(cnn, images):
    x, _ = images
    xi = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(cnn(xi)[:, 1].sum(), xi)
    per_point = g.flatten(1).norm(dim=1).double().numpy()
    gn = measures.gradient_norm(cnn, x, output=1)
    assert gn == pytest.approx(per_point.mean(), rel=1e-5)
    assert gn.se == pytest.approx(per_point.std(ddof=1) / math.sqrt(37), rel=1e-4)
    # FPL: the mean and se of the segments' own total variations, each computed alone
    ia, ib = inputspace.segment_endpoints(37, 12, 3)
    tv = np.array([float(measures.segment_total_variation(cnn, x[i], x[j], points=15, output=1))
                   for i, j in zip(ia.tolist(), ib.tolist())])
    fpl = measures.function_path_length(cnn, x, segments=12, points=15, seed=3, output=1)
    assert fpl == pytest.approx(tv.mean(), rel=1e-5)
    assert fpl.se == pytest.approx(tv.std(ddof=1) / math.sqrt(12), rel=1e-4) and fpl.n == 12


def test_exact_measures_carry_no_error():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 1))
    for value in (measures.weights_product(net), measures.path_norm(net),
                  measures.segment_total_variation(net, torch.zeros(3), torch.ones(3))):
        assert isinstance(value, Estimate) and value.se == 0.0 and value.n == 0 and value > 0


def test_estimate_is_a_float_with_its_error():
    e = Estimate(2.0, 0.1, 50)
    assert e + 1 == 3.0 and e * 2 == 4.0 and math.isclose(math.log(e), math.log(2.0)) and float(e) == 2.0
    assert e.interval() == pytest.approx((2.0 - 0.196, 2.0 + 0.196))
    assert e.as_dict() == {"value": 2.0, "se": 0.1, "n": 50}
    back = pickle.loads(pickle.dumps(e))
    assert isinstance(back, Estimate) and (back.se, back.n) == (0.1, 50)
    assert str(e) == "2 ± 0.1" and "se=0.1" in repr(e) and str(Estimate(1 / 3)) == "0.333333"
    mean, se = mean_and_se(torch.tensor([6.0]), torch.tensor([14.0]), 3)   # draws 1, 2, 3
    assert float(mean) == 2.0 and float(se) == pytest.approx(1 / math.sqrt(3))
    assert math.isnan(float(mean_and_se(torch.tensor([1.0]), torch.tensor([1.0]), 1)[1]))


def test_memory_holds_one_batch_the_loader_is_read_batch_by_batch(cnn):
    seen = []

    class Batches:   # an iterable of batches that records the largest batch it handed out
        def __iter__(self):
            g = torch.Generator().manual_seed(0)
            for _ in range(6):
                b = torch.randn(4, 1, 8, 8, generator=g)
                seen.append(b.shape[0])
                yield b

    gn = measures.gradient_norm(cnn, Batches())
    assert gn.n == 24 and max(seen) == 4
    fpl = measures.function_path_length(cnn, Batches(), segments=5, points=10)
    assert fpl.n == 5 and math.isfinite(fpl)


def test_bad_data_gets_one_clear_error(cnn):
    gen = (torch.randn(4, 1, 8, 8) for _ in range(3))
    with pytest.raises(TypeError, match="read only once"):
        measures.function_path_length(cnn, gen)
    with pytest.raises(TypeError, match="Python objects"):
        measures.gradient_norm(cnn, np.array([object(), object()]))
    with pytest.raises(ValueError, match="no points"):
        measures.gradient_norm(cnn, [])
    with pytest.raises(ValueError, match="after points of shape"):
        measures.gradient_norm(cnn, [torch.randn(2, 1, 8, 8), torch.randn(2, 1, 7, 7)])
    with pytest.raises(ValueError, match="scalar"):
        measures.lipschitz_bounds(cnn, torch.randn(3, 1, 8, 8))


def test_progress_is_reported_per_batch_segment_and_hessian_vector_product(cnn, images):
    from smoothness.measures import curvature
    x, y = images
    seen = []
    measures.gradient_norm(cnn, loader(x, y), progress=seen.append)
    assert sum(seen) == len(loader(x, y)) == 5          # batches
    seen.clear()
    measures.path_lengths(cnn, x, segments=30, points=10, progress=seen.append)
    assert sum(seen) == 30                               # segments
    seen.clear()
    curvature.hessian_trace(cnn, x, y, probes=7, progress=seen.append)
    assert sum(seen) == 7                                # probes
    seen.clear()
    d = curvature.eigenvalue_density(cnn, x, y, runs=2, steps=9, progress=seen.append)
    assert sum(seen) == 18 and d.runs == 2               # Hessian-vector products
