"""The measures of any torch module: image inputs, K outputs (Frobenius norms, one output, the top-two margin),
BatchNorm and Dropout in eval mode, and the same numbers as before for scalar modules."""
import pytest
import torch
from torch import nn

from smoothness import measures, models


def test_a_scalar_module_gives_the_numbers_of_the_closed_form_path():
    f = models.mlp((6, 12, 9, 1), alpha=1.0, seed=3)
    generic = lambda x: f(x)   # noqa: E731  (a callable: not recognized as a ReLU MLP, so autograd is used)
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    for fn in (measures.gradient_norm, measures.gradient_norm_squared):
        assert fn(generic, x) == pytest.approx(fn(f, x), rel=1e-5)
    for fn in (measures.function_path_length, measures.gradient_path_length):
        assert fn(generic, x, segments=30, points=15) == pytest.approx(fn(f, x, segments=30, points=15), rel=1e-5)


def test_a_linear_map_with_k_outputs_has_the_frobenius_norm_and_no_path_length_of_its_gradient():
    torch.manual_seed(0)
    f = nn.Linear(5, 3)
    x = torch.randn(30, 5)
    W = f.weight.detach()
    assert measures.gradient_norm(f, x) == pytest.approx(float(W.norm()), rel=1e-5)           # ||J||_F
    assert measures.gradient_norm_squared(f, x) == pytest.approx(float(W.square().sum()), rel=1e-5)
    assert measures.gradient_path_length(f, x, segments=20, points=10) == pytest.approx(0.0, abs=1e-6)
    a, b = x[0], x[1]
    assert measures.segment_total_variation(f, a, b, points=7) == pytest.approx(float((W @ (b - a)).norm()), rel=1e-5)
    assert measures.gradient_norm(f, x, output=1) == pytest.approx(float(W[1].norm()), rel=1e-5)


def test_the_margin_between_the_two_largest_outputs():
    """f(x) = (x1, x2, -10): at every point the top two are x1 and x2, so the margin |x1 - x2| has gradient
    norm sqrt(2) wherever x1 != x2."""
    f = lambda x: torch.stack([x[:, 0], x[:, 1], torch.full_like(x[:, 0], -10.0)], 1)   # noqa: E731
    x = torch.randn(25, 2, generator=torch.Generator().manual_seed(1))
    assert measures.gradient_norm(f, x, output="margin") == pytest.approx(2 ** 0.5, rel=1e-6)
    with pytest.raises(ValueError, match="output must be None"):
        measures.gradient_norm(f, x, output="top")


def test_images_through_a_conv_net_in_eval_mode():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                      nn.Linear(3 * 6 * 6, 4))
    x = torch.rand(12, 1, 8, 8)
    f.train()
    f(torch.rand(32, 1, 8, 8))          # running statistics that are not the identity
    with pytest.raises(ValueError, match=r"training mode, with the layers 1 \(BatchNorm2d\), 3 \(Dropout\).*"
                                         r"model.eval\(\)"):
        measures.gradient_norm(f, x)
    f.eval()
    want = []
    for xi in x:                          # the Jacobian of each image alone, by autograd
        jac = torch.autograd.functional.jacobian(lambda z: f(z[None])[0], xi)   # [4, 1, 8, 8]
        want.append(jac.reshape(4, -1).norm())
    assert measures.gradient_norm(f, x) == pytest.approx(float(torch.stack(want).mean()), rel=1e-5)
    fpl = measures.function_path_length(f, x, segments=10, points=8)
    gpl = measures.gradient_path_length(f, x, segments=10, points=8)
    assert fpl > 0 and gpl > 0
    assert measures.function_path_length(f, x, segments=10, points=8, output=2) <= fpl + 1e-6   # one output of four


def test_lipschitz_bounds_need_a_scalar_output():
    f = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="pass output=k"):
        measures.lipschitz_bounds(f, torch.randn(5, 4))
    lower, _ = measures.lipschitz_bounds(f, torch.randn(5, 4), output=0)
    assert lower == pytest.approx(float(f.weight[0].detach().norm()), rel=1e-5)
