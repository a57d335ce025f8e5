"""The product bound of the Lipschitz constant of any module (measures/lipbound.py): each layer's constant against
a dense computation (the largest singular value of the layer's Jacobian matrix), known constants, soundness
against gradient norms, and the same bound from an nn.Module, its fx trace and its torch.export graph."""
import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from smoothness import measures
from smoothness.measures import lipbound


def dense_norm(f, shape) -> float:
    """The largest singular value of the Jacobian matrix of f at 0 (f linear: its operator norm), in float64."""
    n = math.prod(shape)
    jac = torch.autograd.functional.jacobian(lambda v: f(v.reshape(shape)).reshape(-1),
                                             torch.zeros(n, dtype=torch.float64))
    return float(torch.linalg.matrix_norm(jac, ord=2))


def seeded(seed=0):
    torch.manual_seed(seed)


@pytest.mark.parametrize("layer,shape", [
    (nn.Conv2d(2, 3, 3, bias=False), (1, 2, 7, 7)),
    (nn.Conv2d(2, 3, 3, stride=2, padding=1), (1, 2, 8, 8)),
    (nn.Conv1d(3, 2, 5, padding=2), (1, 3, 11)),
    (nn.ConvTranspose2d(2, 2, 3, stride=2), (1, 2, 4, 4)),
    (nn.AvgPool2d(2), (1, 2, 6, 6)),
    (nn.AdaptiveAvgPool2d(1), (1, 3, 5, 5)),
])
def test_a_linear_layers_constant_is_its_dense_spectral_norm(layer, shape):
    seeded()
    got = lipbound.module_constant(layer, torch.zeros(shape))
    double = layer.double()
    zero = double(torch.zeros(shape, dtype=torch.float64)).detach()
    want = dense_norm(lambda v: double(v) - zero, shape)
    assert got == pytest.approx(want, rel=1e-7)


def test_a_linear_map_gets_exactly_its_norm_and_the_lower_bound_meets_it():
    # f(x) = w . x + b has Lipschitz constant ||w||; the upper and lower bound both give it
    seeded()
    f = nn.Linear(6, 1)
    x = torch.randn(30, 6)
    lower, upper = measures.lipschitz_bounds(f, x)
    w = float(f.weight.detach().double().norm())
    assert upper == pytest.approx(w, rel=1e-12)
    assert lower == pytest.approx(w, rel=1e-6)


def test_a_tanh_mlp_gets_the_product_of_its_layers_norms_and_brackets_its_gradients():
    seeded(1)
    f = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    x = torch.randn(20, 3)
    lower, upper = measures.lipschitz_bounds(f, x)
    want = math.prod(float(torch.linalg.matrix_norm(m.weight.detach().double(), ord=2)) for m in (f[0], f[2]))
    assert upper == pytest.approx(want, rel=1e-12)
    xi = x.clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(f(xi).sum(), xi)
    assert lower == pytest.approx(float(gr.norm(dim=1).max()), rel=1e-6)   # no ascent off the ReLU MLP path
    assert lower.n == 20 and lower <= upper


def test_batchnorm_in_eval_mode_scales_by_its_largest_gain():
    seeded()
    f = nn.Sequential(nn.Linear(4, 3, bias=False), nn.BatchNorm1d(3)).eval()
    with torch.no_grad():
        f[1].weight.copy_(torch.tensor([0.5, -2.0, 1.0]))
        f[1].running_var.copy_(torch.tensor([1.0, 4.0, 0.25]))
    gain = max(0.5 / math.sqrt(1 + 1e-5), 2.0 / math.sqrt(4 + 1e-5), 1.0 / math.sqrt(0.25 + 1e-5))
    want = float(torch.linalg.matrix_norm(f[0].weight.detach().double(), ord=2)) * gain
    assert lipbound.upper_bound(f, torch.zeros(1, 4)) == pytest.approx(want, rel=1e-12)
    f.train()
    with pytest.raises(ValueError, match="train"):
        lipbound.upper_bound(f, torch.zeros(1, 4))


def test_max_pooling_constants():
    assert lipbound.module_constant(nn.MaxPool2d(2), torch.zeros(1, 1, 4, 4)) == 1.0             # disjoint windows
    assert lipbound.module_constant(nn.MaxPool2d(3, stride=1), torch.zeros(1, 1, 6, 6)) == 3.0    # 9 windows per input
    assert lipbound.module_constant(nn.MaxPool1d(3, stride=2), torch.zeros(1, 1, 9)) == pytest.approx(math.sqrt(2))
    # overlapping 1-D windows of size 3, stride 1: the input [0, 1, 0, 0, 0] moves three outputs by 1 -> sqrt(3) is met
    pool = nn.MaxPool1d(3, stride=1)
    e = torch.tensor([[[0.0, 0.0, 1.0, 0.0, 0.0]]])
    assert float(pool(e).norm()) == pytest.approx(math.sqrt(3))
    assert lipbound.module_constant(pool, e) == pytest.approx(math.sqrt(3))


class Net(nn.Module):
    """A small CNN written with a custom forward (functional calls, a method call, a residual sum)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 1)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = h + F.relu(self.conv2(h))
        h = F.max_pool2d(h, 2)
        return self.fc(h.flatten(1))


def test_a_custom_cnn_the_bound_is_sound_and_the_same_from_its_torch_export_graph():
    seeded(2)
    net = Net().eval()
    x = torch.randn(64, 1, 8, 8)
    bound = lipbound.upper_bound(net, x)
    c1, c2 = (lipbound.module_constant(m, torch.zeros(1, 4 if m is net.conv2 else 1, 8, 8))
              for m in (net.conv1, net.conv2))
    want = c1 * (1 + c2) * 1.0 * float(torch.linalg.matrix_norm(net.fc.weight.detach().double(), ord=2))
    assert bound == pytest.approx(want, rel=1e-7)
    xi = x.clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(net(xi).sum(), xi)
    assert float(gr.flatten(1).norm(dim=1).max()) <= bound
    exported = torch.export.export(net, (x[:1],)).module()
    assert lipbound.upper_bound(exported, x) == pytest.approx(bound, rel=1e-7)


def test_an_uncovered_layer_gives_a_nan_upper_bound_with_a_warning_naming_it():
    seeded()
    f = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 1))
    with pytest.raises(lipbound.Unsupported, match="LayerNorm"):
        lipbound.upper_bound(f, torch.zeros(1, 4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lower, upper = measures.lipschitz_bounds(f, torch.randn(10, 4))
    assert math.isnan(upper) and lower > 0
    assert any("LayerNorm" in str(w.message) for w in caught)


def test_data_dependent_control_flow_and_torchscript_are_refused_with_a_reason():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 1)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(lipbound.Unsupported, match="control flow"):
        lipbound.upper_bound(Branchy(), torch.zeros(1, 3))
    with pytest.raises(lipbound.Unsupported, match="TorchScript"):
        lipbound.upper_bound(torch.jit.script(nn.Linear(3, 1)), torch.zeros(1, 3))
