"""Fully connected ReLU networks (the paper's; scalar output, or K outputs for a classification task), stored as stacks
of M independent models, and their family (MLPFamily, models/family.py).

A stack holds, for every layer l, weights of shape [M, n_out, n_in] and biases [M, n_out]; a
single model is the case M = 1. Forward and backward passes are batched matmuls over the stack,
so M models cost one tensor program. `ReLUMLP` wraps one model as an ordinary `torch.nn.Module`
mapping [n, d] -> [n], which is what the public measure functions take.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from smoothness import paper
from smoothness.models.family import Family
from smoothness.models.losses import dataset_loss
from smoothness.runtime import rng

DEFAULT_WIDTHS = (784, paper.HIDDEN, 1)
DEFAULT_ALPHA = paper.ALPHA


@dataclass
class MLPStack:
    """M independent ReLU MLPs: weights[l] is [M, n_out, n_in], biases[l] is [M, n_out]."""

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]

    @property
    def n_models(self) -> int:
        """M, the number of models in the stack."""
        return self.weights[0].shape[0]

    @property
    def widths(self) -> tuple[int, ...]:
        """(d_in, h_1, ..., 1): the layer widths, shared by every model of the stack."""
        return (self.weights[0].shape[2],) + tuple(w.shape[1] for w in self.weights)

    @property
    def depth(self) -> int:
        """Number of hidden layers."""
        return len(self.weights) - 1

    def tensors(self) -> list[torch.Tensor]:
        """The weights, then the biases."""
        return [*self.weights, *self.biases]

    def with_tensors(self, tensors) -> "MLPStack":
        """A stack of the same kind holding these tensors (in tensors() order: the weights, then the biases)."""
        n = len(self.weights)
        return MLPStack(list(tensors[:n]), list(tensors[n:]))

    def select(self, idx) -> "MLPStack":
        """The sub-stack of the models at positions idx (a LongTensor or a list)."""
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.weights[0].device)
        return MLPStack([w[idx] for w in self.weights], [b[idx] for b in self.biases])

    def as_leaves(self) -> "MLPStack":
        """The same values as new autograd leaves (detached, requiring grad): differentiate with respect to
        the returned stack's tensors()."""
        return MLPStack([w.detach().requires_grad_(True) for w in self.weights],
                        [b.detach().requires_grad_(True) for b in self.biases])

    def rows(self, a: int, b: int) -> "MLPStack":
        """Models a..b-1 as views: in-place updates of the result update this stack."""
        return MLPStack([w[a:b] for w in self.weights], [x[a:b] for x in self.biases])

    def to(self, *args, **kwargs) -> "MLPStack":
        """The stack with every tensor moved or cast as Tensor.to does."""
        return MLPStack([w.to(*args, **kwargs) for w in self.weights],
                        [b.to(*args, **kwargs) for b in self.biases])

    def clone(self) -> "MLPStack":
        """A copy whose tensors share no memory with this stack."""
        return MLPStack([w.clone() for w in self.weights], [b.clone() for b in self.biases])

    @staticmethod
    def cat(stacks: list["MLPStack"]) -> "MLPStack":
        """The stacks' models in one stack, in order."""
        n = len(stacks[0].weights)
        return MLPStack([torch.cat([s.weights[l] for s in stacks]) for l in range(n)],
                        [torch.cat([s.biases[l] for s in stacks]) for l in range(n)])

    def state_dict(self) -> dict:
        """The weights and biases as CPU tensors, for saving."""
        return {"weights": [w.detach().cpu() for w in self.weights],
                "biases": [b.detach().cpu() for b in self.biases]}

    @staticmethod
    def from_state_dict(state: dict) -> "MLPStack":
        """The stack saved by state_dict."""
        return MLPStack(list(state["weights"]), list(state["biases"]))


def init_scale_bound(alpha, n_in: int, n_out: int):
    """Paper sec. 4.1: weights uniform on [-l, l], l = sqrt(6 alpha / (n_in + n_out))."""
    return (6.0 * alpha / (n_in + n_out)) ** 0.5


_INIT_CHUNK = 1 << 22  # weights hashed per call of the generator in init_mlp


def init_mlp(seeds, widths=DEFAULT_WIDTHS, alpha=DEFAULT_ALPHA, *, device=None,
             dtype=torch.float32) -> MLPStack:
    """The paper's initializer for len(seeds) models: alpha-scaled Glorot-uniform weights, zero biases.

    seeds: sequence or int tensor [M]; alpha: a float or one value per model.
    Weights are drawn with the counter-based generator, so they do not depend on M or the device.
    """
    seeds = torch.as_tensor(seeds, dtype=torch.int64, device=device).reshape(-1)
    m = seeds.shape[0]
    alpha = torch.as_tensor(alpha, dtype=torch.float64, device=device).expand(m)
    weights, biases = [], []
    for layer, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        idx = torch.arange(n_out * n_in, device=device).reshape(1, n_out, n_in)
        bound = init_scale_bound(alpha, n_in, n_out).to(torch.float32)[:, None, None]
        w = torch.empty(m, n_out, n_in, device=device, dtype=dtype)
        # A few models at a time: the hash's int64 temporaries stay small (the values do not change).
        step = max(1, _INIT_CHUNK // (n_out * n_in))
        for a in range(0, m, step):
            u = rng.uniform(seeds[a:a + step, None, None], rng.STREAM_INIT, layer, idx, device=device)
            w[a:a + step] = (2.0 * u - 1.0) * bound[a:a + step]
        weights.append(w)
        biases.append(torch.zeros(m, n_out, device=device, dtype=dtype))
    return MLPStack(weights, biases)


def forward(p: MLPStack, x: torch.Tensor, cache: bool = False):
    """Outputs [M, n] for inputs x of shape [M, n, d] (or [n, d], shared by all models).

    With cache=True also returns the list of layer inputs and pre-activations for sgd_update_().
    """
    if x.dim() == 2:
        x = x.expand(p.n_models, *x.shape)
    acts, pres = [x], []
    h = x
    last = len(p.weights) - 1
    for l, (w, b) in enumerate(zip(p.weights, p.biases)):
        if l < last:
            z = torch.baddbmm(b[:, None, :], h, w.transpose(1, 2))
        else:
            # Output layer as W h^T: unlike h W^T, its rounding does not depend on M (a gemv for
            # M = 1 and a batched gemm otherwise sum in different orders), keeping runs batch-invariant.
            z = torch.bmm(w, h.transpose(1, 2)).transpose(1, 2) + b[:, None, :]
        if l < last:
            pres.append(z)
            h = torch.relu(z)
            acts.append(h)
        else:
            h = z
    out = h[..., 0] if h.shape[-1] == 1 else h
    return (out, acts, pres) if cache else out


# -- the loss, eq. 2: the mean squared error, written once ------------------------------------------------------
def residuals(out: torch.Tensor, y: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """f(x) - y per point [M, n], 0 at the points that are not valid (padding of a partial batch or a short
    training set)."""
    return out - y if valid is None else torch.where(valid, out - y, 0.0)


def mse(p: MLPStack, x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor | None = None):
    """Eq. 2 per model over its valid points, differentiable in p: the loss [M] and the residuals [M, n]."""
    err = residuals(forward(p, x), y, valid)
    count = err.shape[1] if valid is None else valid.sum(1)
    return err.square().sum(1) / count, err


def dataset_mse(p: MLPStack, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Eq. 2 of each model of the stack on a whole data set, evaluated (no gradient; float64 sums over chunks of
    points, losses.dataset_loss): x [n, d] or [M, n, d], y [n] or [M, n]. [M]. The training objective on a batch,
    differentiable, is mse."""
    return dataset_loss(lambda xb: forward(p, xb), x, y, "mse", chunk)


def mse_scale(valid: torch.Tensor | None, batch_size: int, lr: torch.Tensor | None = None, dtype=torch.float32):
    """The factor that turns residuals into dL/dout of eq. 2 on a batch, 2 / count (times the learning rate lr,
    where given): a number for full batches, [M] of `dtype` with a mask."""
    if valid is None:
        return 2.0 / batch_size if lr is None else lr * (2.0 / batch_size)
    count = valid.sum(1).to(dtype)
    return 2.0 / count if lr is None else 2.0 * lr / count


def sgd_update_(p: MLPStack, acts, pres, dout_scaled: torch.Tensor, dpre=None) -> None:
    """In place, theta -= lr * grad for every model, given dout_scaled = lr * dLoss/dout [M, n].

    The weight update is fused into the gradient GEMM (W <- W - G^T A via baddbmm), so no
    gradient tensor is materialized; each layer's backpropagated signal is computed before that
    layer's weights change. dpre: as in parameter_grads, scaled by lr like dout_scaled.
    """
    g = dout_scaled[..., None]
    for l in range(len(p.weights) - 1, -1, -1):
        below = torch.bmm(g, p.weights[l]) * (pres[l - 1] > 0) if l > 0 else None
        if below is not None and dpre is not None and dpre[l - 1] is not None:
            below = below + dpre[l - 1]
        p.weights[l].baddbmm_(g.transpose(1, 2), acts[l], alpha=-1.0)
        p.biases[l].sub_(g.sum(1))
        g = below


def parameter_grads(p: MLPStack, acts, pres, dout: torch.Tensor, dpre=None) -> list[torch.Tensor]:
    """Every model's parameter gradient (in p.tensors() order) given dout = dLoss/dout [M, n], by the
    same backpropagation as sgd_update_ but materialized (for optimizers with state).

    dpre, if given, holds per hidden layer l a further gradient with respect to its pre-activations pres[l]
    (or None), added to the backpropagated one before layer l's weight gradient is formed: a loss term that
    depends on the pre-activations (a smoothness penalty along segments, regularizers.py) then shares the
    data term's weight-gradient matmul."""
    n = len(p.weights)
    grads: list[torch.Tensor] = [None] * (2 * n)  # type: ignore[list-item]
    g = dout[..., None]
    for l in range(n - 1, -1, -1):
        grads[l] = torch.bmm(g.transpose(1, 2), acts[l])
        grads[n + l] = g.sum(1)
        if l > 0:
            g = torch.bmm(g, p.weights[l]) * (pres[l - 1] > 0)
            if dpre is not None and dpre[l - 1] is not None:
                g = g + dpre[l - 1]
    return grads


def input_gradient(p: MLPStack, x: torch.Tensor) -> torch.Tensor:
    """Closed-form input gradient of a ReLU MLP: grad f(x) = W1^T D1 W2^T ... D_L w_out. [M, n, d]."""
    _, _, pres = forward(p, x, cache=True)
    g = p.weights[-1].expand(-1, x.shape[-2], -1)  # [M, n, h_L]
    for l in range(len(p.weights) - 2, -1, -1):
        g = torch.bmm(g * (pres[l] > 0), p.weights[l])
    return g


# -- the weight measures of eq. 13 (measures.inputspace re-exports them) -------------------------------------------
def _one_output(p: MLPStack, name: str) -> None:
    if p.weights[-1].shape[1] != 1:
        raise ValueError(f"{name} is defined for networks of one output; this one has {p.weights[-1].shape[1]} "
                         "(the norm_product measure and regularizer take any number)")


def weights_products(p: MLPStack) -> torch.Tensor:
    """Eq. 13: WP = sum_i |w2_i| * ||w1_i|| for two-layer ReLU nets. [M]."""
    if p.depth != 1:
        raise ValueError(f"weights_product is defined for two-layer ReLU networks (one hidden layer); "
                         f"this network has {p.depth} hidden layers")
    _one_output(p, "weights_product")
    return (p.weights[1][:, 0, :].abs() * p.weights[0].norm(dim=2)).sum(1)


def path_norms(p: MLPStack) -> torch.Tensor:
    """WP generalized to any depth as a path norm: the sum over all input-to-output paths through the
    hidden units of the product of the absolute weights along the path, with the first layer's weights
    of a unit taken together as their Euclidean norm:
        PN = |w_out|^T |W_L| ... |W_2| (||W_1[i, :]||)_i.
    For one hidden layer this is eq. 13 exactly; for any depth it bounds sup_x ||grad_x f(x)||. [M]."""
    _one_output(p, "path_norm")
    v = p.weights[0].norm(dim=2)                                 # [M, h_1]
    for w in p.weights[1:]:
        v = torch.bmm(w.abs(), v[..., None])[..., 0]             # [M, h_{l+1}]
    return v[:, 0]


class ReLUMLP(nn.Module):
    """One ReLU MLP f: R^d -> R as a torch module; maps [n, d] -> [n] (and [d] -> scalar)."""

    def __init__(self, weights, biases):
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(torch.as_tensor(w)) for w in weights])
        self.biases = nn.ParameterList([nn.Parameter(torch.as_tensor(b)) for b in biases])

    @property
    def depth(self) -> int:
        """Number of hidden layers."""
        return len(self.weights) - 1

    @property
    def widths(self) -> tuple[int, ...]:
        """(d_in, h_1, ..., 1)."""
        return (self.weights[0].shape[1],) + tuple(w.shape[0] for w in self.weights)

    def stack(self) -> MLPStack:
        """This model as a stack of one (views, detached from autograd)."""
        return MLPStack([w.detach()[None] for w in self.weights],
                        [b.detach()[None] for b in self.biases])

    @staticmethod
    def from_stack(p: MLPStack, m: int = 0) -> "ReLUMLP":
        """Model m of a stack as a ReLUMLP module."""
        return ReLUMLP([w[m].detach().clone() for w in p.weights],
                       [b[m].detach().clone() for b in p.biases])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) for x [n, d]: [n]."""
        single = x.dim() == 1
        h = x[None] if single else x
        last = len(self.weights) - 1
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.nn.functional.linear(h, w, b)
            if l < last:
                h = torch.relu(h)
        out = h[..., 0] if h.shape[-1] == 1 else h
        return out[0] if single else out


def mlp(widths=DEFAULT_WIDTHS, alpha: float = DEFAULT_ALPHA, seed: int = 0) -> ReLUMLP:
    """A freshly initialized ReLU MLP (paper init), e.g. mlp((784, 256, 1)) or deeper widths."""
    if len(widths) < 2 or widths[-1] != 1:
        raise ValueError(f"widths must run from the input size to a scalar output 1, got {widths}")
    return ReLUMLP.from_stack(init_mlp([seed], widths, alpha))


def two_layer_relu(W1, b1, w2, b2) -> ReLUMLP:
    """Eq. 12 from explicit weights: f(x) = <w2, relu(W1 x + b1)> + b2.

    W1: [h, d], b1: [h], w2: [h], b2: scalar. Arrays or tensors; float32 unless given as float64.
    """
    def t(a):
        a = torch.as_tensor(a)
        return a if a.dtype == torch.float64 else a.to(torch.float32)
    W1, b1, w2, b2 = t(W1), t(b1), t(w2), t(b2)
    if W1.dim() != 2 or b1.shape != (W1.shape[0],) or w2.shape != (W1.shape[0],) or b2.numel() != 1:
        raise ValueError(f"expected W1 [h, d], b1 [h], w2 [h], b2 scalar; got {tuple(W1.shape)}, "
                         f"{tuple(b1.shape)}, {tuple(w2.shape)}, {tuple(b2.shape)}")
    return ReLUMLP([W1, w2[None, :]], [b1, b2.reshape(1)])


@dataclass(frozen=True)
class MLPSettings:
    """The MLP family's architecture: the widths of its hidden layers (the paper's net has one of 256 units)."""
    hidden: tuple[int, ...] = field(default=(paper.HIDDEN,), metadata={"doc": "hidden-layer widths"})


class MLPFamily(Family):
    """Fully connected ReLU nets, the paper's (sec. 4.1), held as MLPStack: the family with closed forms (the
    input gradient, the fused SGD update and, for one hidden layer, the penalties' gradients). Initialization: the
    paper's alpha-scaled Glorot-uniform weights and zero biases (init_mlp)."""

    name = "mlp"

    def __init__(self, settings: MLPSettings, input_shape, outputs: int = 1):
        super().__init__(settings, input_shape, outputs)
        self.widths = (self.input_dim, *settings.hidden, self.outputs)

    @property
    def closed_form(self) -> bool:   # the closed forms are of one output
        return self.outputs == 1

    def init(self, seeds, alpha, device=None) -> MLPStack:
        return init_mlp(seeds, self.widths, alpha, device=device)

    def forward(self, p: MLPStack, x: torch.Tensor) -> torch.Tensor:
        out = forward(p, x)
        return out[..., None] if out.dim() == 2 else out

    def values(self, p: MLPStack, x: torch.Tensor) -> torch.Tensor:
        return forward(p, x)

    def input_grads(self, p: MLPStack, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        if self.outputs != 1:
            return super().input_grads(p, x, create_graph)
        return input_gradient(p, self.points(p, x))

    def module(self, p: MLPStack, m: int = 0) -> nn.Module:
        """A ReLUMLP for one output (the closed forms recognize it), an nn.Sequential of Linear and ReLU layers for K
        outputs (which torch.fx traces, for the Lipschitz upper bound)."""
        if self.outputs == 1:
            return ReLUMLP.from_stack(p, m)
        layers: list[nn.Module] = []
        for w, b in zip(p.weights, p.biases):
            lin = nn.Linear(w.shape[2], w.shape[1])
            with torch.no_grad():
                lin.weight.copy_(w[m])
                lin.bias.copy_(b[m])
            layers += [lin, nn.ReLU()]
        return nn.Sequential(*layers[:-1]).eval()

    def stack_of(self, modules) -> MLPStack:
        def one(m):
            if isinstance(m, ReLUMLP):
                return m.stack()
            lins = [x for x in m if isinstance(x, nn.Linear)]
            return MLPStack([x.weight.detach()[None] for x in lins], [x.bias.detach()[None] for x in lins])
        return MLPStack.cat([one(m) for m in modules])


def family_of(p: MLPStack) -> MLPFamily:
    """The MLP family of a stack (its widths)."""
    w = p.widths
    return MLPFamily(MLPSettings(tuple(w[1:-1])), (w[0],), w[-1])
