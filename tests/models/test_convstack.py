"""The CNN family's stacked program (grouped convolutions, the input gradient written out) against its one-model
modules and autograd's double backward: outputs, input gradients and the gradient of the GN penalty, for max and
average pooling, odd image sizes, one output and several."""
import pytest
import torch

from smoothness.models.cnn import CNNFamily, CNNSettings
from smoothness.models.family import ModuleFamily


def family(pool, outputs, shape=(2, 9, 11)):
    return CNNFamily(CNNSettings(channels=(3, 4), kernel=3, pool=pool), shape, outputs)


def generic(fam):
    """The same architecture evaluated by torch.func (functional_call under vmap, autograd input gradients)."""
    return ModuleFamily(fam.settings, fam.input_shape, fam.outputs, fam.template)


def stack(fam, m=3):
    p = fam.init(list(range(m)), 1.0)
    g = torch.Generator().manual_seed(1)
    # random biases too (init sets them to 0), in float64 for a tight comparison
    return p._with([v.double() + 0.1 * torch.randn(v.shape, generator=g, dtype=torch.float64) for v in p.values])


@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize("outputs", [1, 3])
def test_outputs_and_input_gradients_are_those_of_the_modules(pool, outputs):
    fam = family(pool, outputs)
    p = stack(fam)
    x = torch.randn(3, 5, fam.input_dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = fam.forward(p, x)
    ref = generic(fam)
    assert out.shape == (3, 5, outputs)
    assert torch.allclose(out, ref.forward(p, x), atol=1e-12)
    g = fam.input_grads(p, x)
    assert g.shape == (3, 5, outputs * fam.input_dim)
    assert torch.allclose(g, ref.input_grads(p, x), atol=1e-12)
    shared = fam.forward(p, x[0])            # points [n, d] shared by all models
    assert torch.allclose(shared[1], ref.forward(p, x[0])[1], atol=1e-12)


@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize("outputs", [1, 2])
def test_the_gradient_of_the_gradient_norm_penalty_is_autograds_double_backward(pool, outputs):
    fam = family(pool, outputs)
    p = stack(fam)
    x = torch.randn(3, 4, fam.input_dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def penalty_grads(f):
        q = p._with([v.detach().requires_grad_(True) for v in p.values])
        gn = f.input_grads(q, x, create_graph=True).norm(dim=-1).mean(1)     # [M]: GN of eq. 4 per model
        w = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
        return torch.autograd.grad((gn * w).sum(), q.values, allow_unused=True, materialize_grads=True)

    for a, b in zip(penalty_grads(fam), penalty_grads(generic(fam))):
        assert torch.allclose(a, b, atol=1e-10)


def test_without_create_graph_the_input_gradient_holds_no_graph():
    fam = family("max", 1)
    p = stack(fam)
    q = p._with([v.requires_grad_(True) for v in p.values])
    g = fam.input_grads(q, torch.randn(3, 2, fam.input_dim, dtype=torch.float64))
    assert not g.requires_grad


def test_a_model_in_a_stack_of_one_or_of_many_gets_the_same_values_in_float32():
    fam = family("max", 1, (1, 28, 28))
    many = fam.init(list(range(6)), 1.0)
    one = fam.init([4], 1.0)
    x = torch.randn(6, 8, fam.input_dim, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(fam.forward(many, x)[4], fam.forward(one, x[4:5])[0], atol=1e-5)
    assert torch.allclose(fam.input_grads(many, x)[4], fam.input_grads(one, x[4:5])[0], atol=1e-5)
