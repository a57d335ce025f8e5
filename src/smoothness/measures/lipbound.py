"""An upper bound of the Lipschitz constant of any torch module built from common layers (convolutional nets
included): L(f) <= the product along the computation graph of the layers' own constants, in the Euclidean norm,
for inputs of the shape of the example given (the bound of a convolution depends on the input's size).

The graph comes from torch.fx (symbolic_trace of an nn.Module, or the graph of a torch.export program); a node's
bound is that of its input times the layer's constant, a sum (a + b) adds its inputs' bounds, a concatenation
takes the root of the sum of their squares. The layers' constants:

  Linear                          the largest singular value of W (exact, float64)
  Conv, ConvTranspose, AvgPool,   linear maps of the input: the spectral norm of x -> layer(x) - layer(0), the root
  AdaptiveAvgPool, mean, sum      of the top eigenvalue of A^T A (A^T by autograd) by Lanczos in float64 plus its
                                  residual bound, to a residual below 1e-9 of the value
  BatchNorm in eval mode          the diagonal scaling max |gamma| / sqrt(running_var + eps)
  MaxPool (kernel k, stride s)    sqrt(prod over dims of min(k, ceil(((k - 1) dilation + 1) / s))): each input lies
                                  in at most that many windows, and a max over a window is 1-Lipschitz
  ReLU, Tanh, ELU (alpha <= 1),   1 (the supremum of |activation'|; LeakyReLU max(1, |slope|), Sigmoid 1/4, GELU
  Softplus, ... ; reshapes,       1.129, SiLU 1.09984, Mish 1.08850, Hardswish 1.5, SELU 1.75810)
  Flatten, Dropout in eval mode

Anything else (LayerNorm, attention, a custom op, TorchScript) makes the bound unavailable: `upper_bound` raises
Unsupported naming the layer, and lipschitz_bounds reports NaN with that reason.
"""
from __future__ import annotations

import copy
import math
import operator

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

from smoothness.measures import anymodule, lanczos

ITERS = 500       # Lanczos steps at most for a layer's spectral norm
TOL = 1e-9        # ... until the residual of the top eigenvalue of A^T A is below this fraction of it

aten = torch.ops.aten
# Elementwise activations: the supremum of |activation'| (computed on a fine grid in float64, rounded up).
_ACTIVATIONS = {nn.ReLU: 1.0, nn.ReLU6: 1.0, nn.Tanh: 1.0, nn.Hardtanh: 1.0, nn.Softplus: 1.0, nn.Softsign: 1.0,
                nn.CELU: 1.0, nn.Tanhshrink: 1.0, nn.Sigmoid: 0.25, nn.SiLU: 1.09984, nn.Mish: 1.08850,
                nn.Hardswish: 1.5, nn.SELU: 1.75810, nn.Hardsigmoid: 1.0 / 6.0}
_SHAPE_ONLY = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
               nn.AlphaDropout)
_LINEAR_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                   nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                   nn.AdaptiveAvgPool3d)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)

_ONE_FUNCTIONS = {F.relu, torch.relu, F.relu6, torch.tanh, F.tanh, F.hardtanh, F.softplus, F.softsign, torch.flatten,
                  torch.squeeze, torch.unsqueeze, torch.reshape, torch.permute, torch.transpose, F.dropout,
                  F.dropout1d, F.dropout2d, F.dropout3d, torch.clone,
                  aten.relu.default, aten.tanh.default, aten.hardtanh.default, aten.view.default,
                  aten.reshape.default, aten.flatten.using_ints, aten.permute.default, aten.transpose.int,
                  aten.squeeze.dim, aten.unsqueeze.default, aten.clone.default, aten.contiguous.default,
                  aten._unsafe_view.default, aten.alias.default, aten.relu_.default, aten.dropout.default,
                  aten.detach.default, operator.neg, torch.neg, aten.neg.default}
_CONST_FUNCTIONS = {torch.sigmoid: 0.25, F.sigmoid: 0.25, aten.sigmoid.default: 0.25, F.gelu: 1.12900,
                    aten.gelu.default: 1.12900, F.silu: 1.09984, aten.silu.default: 1.09984, F.mish: 1.08850,
                    F.hardswish: 1.5, F.selu: 1.75810}
_ONE_METHODS = {"relu", "tanh", "flatten", "view", "reshape", "contiguous", "squeeze", "unsqueeze", "permute",
                "transpose", "clone", "detach", "view_as", "reshape_as", "neg"}
_LINEAR_FUNCTIONS = {F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
                     F.conv_transpose3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                     F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, torch.mean, torch.sum,
                     aten.linear.default, aten.conv1d.default, aten.conv2d.default, aten.conv3d.default,
                     aten.convolution.default, aten.avg_pool2d.default, aten.adaptive_avg_pool2d.default,
                     aten.mean.dim, aten.sum.dim_IntList, aten.addmm.default, aten.mm.default, aten.t.default}
_LINEAR_METHODS = {"mean", "sum"}
_ADD = {operator.add, torch.add, aten.add.Tensor, "add"}
_SUB = {operator.sub, torch.sub, aten.sub.Tensor, "sub"}
_MUL = {operator.mul, torch.mul, aten.mul.Tensor, "mul", operator.truediv, torch.div, aten.div.Tensor, "div"}
_CAT = {torch.cat, aten.cat.default}
_MAXPOOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, aten.max_pool2d.default,
                      aten.max_pool2d_with_indices.default}


class Unsupported(ValueError):
    """The module holds a layer or operation this bound does not cover (the message names it)."""


def upper_bound(f, example: torch.Tensor) -> float:
    """An upper bound of sup ||f(x) - f(x')|| / ||x - x'|| (Euclidean norms, all outputs together) of f over inputs
    of the shape of `example` [n, ...] (one point is used). For an output index k it bounds that output's constant
    too; the margin between the two largest outputs has at most sqrt(2) times it. Unsupported: see the module."""
    anymodule.check_mode(f)
    if isinstance(f, torch.jit.ScriptModule):
        raise Unsupported("a TorchScript module cannot be traced into layers; save the model with torch.export or "
                          "pass the nn.Module")
    if not isinstance(f, nn.Module):
        raise Unsupported(f"a {type(f).__name__} is not an nn.Module: its layers are unknown")
    try:
        gm = f if isinstance(f, fx.GraphModule) else fx.symbolic_trace(f)
    except Exception as e:   # fx raises many kinds (TraceError, TypeError, NotImplementedError, ...)
        raise Unsupported(f"torch.fx cannot trace {type(f).__name__} ({type(e).__name__}: {e}); data-dependent "
                          "control flow cannot be bounded layer by layer") from None
    example = example[:1].detach()
    values = _values(gm, example)
    bounds: dict[fx.Node, float] = {}
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder" and torch.is_tensor(values.get(n))]
    if not inputs:
        raise Unsupported("the module's graph has no tensor input")
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            bounds[node] = 1.0 if node is inputs[0] else 0.0
        elif node.op == "get_attr":
            bounds[node] = 0.0
        elif node.op == "output":
            outs = [a for a in _tensor_args(node.args, values) if bounds.get(a, 0.0) > 0]
            if len(outs) != 1:
                raise Unsupported("the module must return one tensor")
            return bounds[outs[0]]
        else:
            bounds[node] = _node_bound(gm, node, values, bounds)
    raise Unsupported("the graph has no output")


def _values(gm: fx.GraphModule, example: torch.Tensor) -> dict:
    """Every node's value on the example (a run of the graph), with its shape recorded by ShapeProp."""
    values = {}

    class Recorder(ShapeProp):
        def run_node(self, n):
            out = super().run_node(n)
            values[n] = out
            return out

    with torch.no_grad():
        Recorder(gm).propagate(example)
    return values


def _is_tensor(v) -> bool:
    """A tensor, or a tuple or list holding one (a layer's several outputs)."""
    return torch.is_tensor(v) or (isinstance(v, (tuple, list)) and any(torch.is_tensor(t) for t in v))


def _tensor_args(args, values) -> list[fx.Node]:
    """The nodes among (nested) args whose values are tensors."""
    found = []
    fx.node.map_arg(args, lambda n: found.append(n) if _is_tensor(values.get(n)) else None)
    return found


def _name(gm, node) -> str:
    if node.op == "call_module":
        return f"layer {node.target!r} ({type(gm.get_submodule(node.target)).__name__})"
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"operation {target!r}"


def _node_bound(gm: fx.GraphModule, node: fx.Node, values: dict, bounds: dict) -> float:
    """The bound of one node's output as a function of the network's input."""
    if not _is_tensor(values.get(node)):
        return 0.0   # sizes, shapes, flags: constant for inputs of the example's shape
    deps = [a for a in _tensor_args((node.args, node.kwargs), values) if bounds.get(a, 0.0) > 0]
    if not deps:
        return 0.0   # a constant (weights, buffers and what is computed from them)
    target = node.target
    if target in _ADD or target in _SUB:
        return sum(bounds[a] for a in deps)
    if target in _CAT:
        return math.sqrt(sum(bounds[a] ** 2 for a in deps))
    if len(deps) != 1:
        raise Unsupported(f"{_name(gm, node)} combines several functions of the input; only sums and "
                          "concatenations of them are bounded")
    (dep,) = deps
    if target is operator.getitem:
        return bounds[dep]   # a part of a tuple, or a slice of a tensor
    return _layer_constant(gm, node, dep, values) * bounds[dep]


def _layer_constant(gm: fx.GraphModule, node: fx.Node, dep: fx.Node, values: dict) -> float:
    """The Lipschitz constant of one layer in its (only) input-dependent argument dep."""
    if node.op == "call_module":
        return module_constant(gm.get_submodule(node.target), values[dep])
    target = node.target
    if node.op == "call_method":
        if target in _ONE_METHODS:
            return 1.0
        if target in _LINEAR_METHODS:
            return _linear_norm(node, dep, values, lambda *a, **k: getattr(a[0], target)(*a[1:], **k))
        if target in ("mul", "div"):
            return _scale(node, dep, values)
    elif node.op == "call_function":
        if target in _ONE_FUNCTIONS:
            return 1.0
        if target in _CONST_FUNCTIONS:
            return _CONST_FUNCTIONS[target]
        if target in (F.leaky_relu, aten.leaky_relu.default):
            slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
            return max(1.0, abs(float(slope)))
        if target in (F.elu, aten.elu.default):
            alpha = node.args[1] if len(node.args) > 1 else node.kwargs.get("alpha", 1.0)
            return max(1.0, abs(float(alpha)))
        if target in _MUL:
            return _scale(node, dep, values)
        if target in _MAXPOOL_FUNCTIONS:
            return _maxpool_constant(*_pool_args(node))
        if target is aten.batch_norm.default:   # (input, weight, bias, mean, var, training, momentum, eps, ...)
            w, _, _, var, training, _, eps = [values.get(a, a) if isinstance(a, fx.Node) else a
                                              for a in node.args[1:8]]
            if not training:
                return _batchnorm_constant(w, var, eps)
        if target is aten._native_batch_norm_legit_no_training.default:
            w, _, _, var, *rest = [values.get(a, a) if isinstance(a, fx.Node) else a for a in node.args[1:]]
            eps = rest[-1] if rest else 1e-5
            return _batchnorm_constant(w, var, eps)
        if target in _LINEAR_FUNCTIONS:
            return _linear_norm(node, dep, values, target)
    raise Unsupported(f"{_name(gm, node)} is not among the layers this bound covers (see smoothness.measures."
                      "lipbound)")


def _scale(node, dep, values) -> float:
    """x * c or x / c with c a constant number or tensor: max |c| (or 1 / min |c|)."""
    other = [a for a in node.args if a is not dep]
    if len(other) != 1:
        raise Unsupported(f"{node.target} with arguments {node.args}")
    c = values.get(other[0], other[0]) if isinstance(other[0], fx.Node) else other[0]
    c = torch.as_tensor(c, dtype=torch.float64).abs()
    if node.target in (operator.truediv, torch.div, aten.div.Tensor, "div"):
        if node.args[0] is not dep:
            raise Unsupported("a division by a function of the input")
        return float(1.0 / c.min())
    return float(c.max())


def module_constant(m: nn.Module, x: torch.Tensor) -> float:
    """The Lipschitz constant of one standard layer m on inputs shaped like x (see the module docstring)."""
    if isinstance(m, nn.Linear):
        return float(torch.linalg.matrix_norm(m.weight.detach().double(), ord=2))
    if isinstance(m, _SHAPE_ONLY):
        return 1.0
    for kind, c in _ACTIVATIONS.items():
        if isinstance(m, kind):
            return c
    if isinstance(m, nn.LeakyReLU):
        return max(1.0, abs(m.negative_slope))
    if isinstance(m, nn.ELU):
        return max(1.0, abs(m.alpha))
    if isinstance(m, nn.GELU):
        return 1.12900
    if isinstance(m, _BATCHNORM):
        if m.running_var is None:
            raise Unsupported(f"{type(m).__name__} without running statistics normalizes by the batch")
        return _batchnorm_constant(m.weight, m.running_var, m.eps)
    if isinstance(m, _MAXPOOL):
        return _maxpool_constant(x.dim() - 2, m.kernel_size, m.stride, m.dilation)
    if isinstance(m, _LINEAR_MODULES):
        layer = copy.deepcopy(m).double().cpu()   # the norm in float64 on the CPU, wherever the model lives
        return operator_norm(lambda v: layer(v), tuple(x.shape))
    raise Unsupported(f"{type(m).__name__} is not among the layers this bound covers (see smoothness.measures."
                      "lipbound)")


def _batchnorm_constant(weight, running_var, eps: float) -> float:
    """BatchNorm in eval mode is the diagonal map x -> gamma (x - mean) / sqrt(var + eps) + beta."""
    scale = 1.0 / (running_var.detach().double() + eps).sqrt()
    if weight is not None:
        scale = scale * weight.detach().double().abs()
    return float(scale.max())


def _tuple(v, k: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * k


def _maxpool_constant(dims: int, kernel, stride, dilation=1) -> float:
    """sqrt(the most windows an input lies in): a max over a window is 1-Lipschitz in the max norm."""
    k, s, d = _tuple(kernel, dims), _tuple(stride if stride else kernel, dims), _tuple(dilation, dims)
    return math.sqrt(math.prod(min(ki, math.ceil(((ki - 1) * di + 1) / si)) for ki, si, di in zip(k, s, d)))


def _pool_args(node) -> tuple:
    """(dims, kernel, stride, dilation) of a max-pooling call."""
    names = ("input", "kernel_size", "stride", "padding", "dilation")
    got = dict(zip(names, node.args))
    got.update({k: v for k, v in node.kwargs.items() if k in names})
    dims = {F.max_pool1d: 1, F.max_pool3d: 3}.get(node.target, 2)
    return dims, got["kernel_size"], got.get("stride") or got["kernel_size"], got.get("dilation", 1)


def _linear_norm(node, dep, values, fn) -> float:
    """The spectral norm of a call linear in its argument dep, the other arguments held at their values."""
    def value(a):
        v = values.get(a, a) if isinstance(a, fx.Node) else a
        return v.detach().double().cpu() if torch.is_tensor(v) and v.is_floating_point() else v

    def call(v):
        args = fx.node.map_aggregate(node.args, lambda a: v if a is dep else value(a))
        kwargs = fx.node.map_aggregate(node.kwargs, lambda a: v if a is dep else value(a))
        return fn(*args, **kwargs)
    return operator_norm(call, tuple(values[dep].shape))


def operator_norm(apply, shape: tuple[int, ...], iters: int = ITERS, tol: float = TOL, seed: int = 0) -> float:
    """||A||_2 of the linear part A v = apply(v) - apply(0) of an affine map of tensors of this shape: the square
    root of the top eigenvalue of A^T A (A^T by autograd) by the Lanczos iteration (lanczos.py) in float64, plus
    its residual bound, stopped once that residual is below tol times the value."""
    g = torch.Generator().manual_seed(seed)
    zero = apply(torch.zeros(shape, dtype=torch.float64)).detach()

    def normal(v: torch.Tensor) -> torch.Tensor:   # A^T A v on flat vectors
        v = v.reshape(shape).requires_grad_(True)
        with torch.enable_grad():
            u = apply(v) - zero
            (w,) = torch.autograd.grad(u, v, grad_outputs=u)
        return w.detach().reshape(-1)

    def converged(alpha, beta, b):
        values, res, _ = lanczos.ritz(alpha, beta, b)
        return bool(res[-1] <= tol * max(float(values[-1]), 1e-300))

    v0 = torch.randn(math.prod(shape), generator=g, dtype=torch.float64)
    alpha, beta, b = lanczos.run(normal, v0, min(iters, math.prod(shape)), converged)
    values, res, _ = lanczos.ritz(alpha, beta, b)
    return math.sqrt(max(float(values[-1] + res[-1]), 0.0))
