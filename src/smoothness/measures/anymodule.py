"""Any torch module as the function f of the measures: inputs of any shape, scalar or vector outputs.

A module maps a batch [n, *shape] (for example images [n, C, H, W]) to [n], [n, 1] or [n, K]. The measures see
it as a function of the flattened input (d = prod(shape); segments, gradients and norms live in R^d), with
  - a scalar output ([n] or [n, 1]): the paper's measures as they are;
  - K outputs and output=None: GN = E ||J_f(x)||_F, FPL with ||f(t_k) - f(t_k-1)||_2 along segments, GPL with the
    Jacobian's change ||J(t_k) - J(t_k-1)||_F; the Jacobian's K rows from K backward passes of one batch's graph;
  - output=k: the k-th output alone; output="margin": the margin between the two largest outputs at each point
    (continuous in x, its gradient that of the top output minus the runner-up's).
Gradients are those of the sum over a batch, which is each point's own as long as each output row depends on its
own input row only: true of a module in eval() mode, where BatchNorm uses its running statistics and Dropout is
the identity; in training mode those layers make f(x) depend on the rest of the batch or on random masks, and
check_mode refuses the module (and a torch.export program exported in training mode). The module's output must be
one tensor with a row per point (checks.output): a tuple, a dict or a 0-d tensor is refused with one line.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from smoothness.errors import MeasureError
from smoothness.measures import checks
from smoothness.runtime.values import is_integer

MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def _training_layers(f: nn.Module) -> list[str]:
    """'name (type)' of each BatchNorm or Dropout layer of f in training mode (TorchScript modules included)."""
    out = []
    for name, m in f.named_modules():
        kind = type(m).__name__ if isinstance(m, MODE_DEPENDENT) else getattr(m, "original_name", "")
        if m.training and (isinstance(m, MODE_DEPENDENT) or (isinstance(m, torch.jit.ScriptModule)
                                                             and re.search("BatchNorm|Dropout", str(kind)))):
            out.append(f"{name} ({kind})" if name else kind)
    return out


def _training_ops(f: nn.Module) -> list[str]:
    """Each op of f's fx graphs (the module of a torch.export program) run in training mode: batch_norm, dropout."""
    out = []
    for m in f.modules():
        if not isinstance(m, torch.fx.GraphModule):
            continue
        for node in m.graph.nodes:
            schema = getattr(node.target, "_schema", None)
            if node.op != "call_function" or schema is None:
                continue
            for i, arg in enumerate(schema.arguments):
                if arg.name in ("training", "train"):
                    v = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
                    if v is True:
                        out.append(schema.name.split("::")[-1])
    return list(dict.fromkeys(out))


def check_mode(f) -> None:
    """A MeasureError if f holds BatchNorm or Dropout layers in training mode, or runs such ops in training mode
    (a torch.export program exported from a module in training mode)."""
    if not isinstance(f, nn.Module):
        return
    layers = _training_layers(f)
    if layers:
        raise MeasureError(f"the model is in training mode, with the layers {', '.join(layers[:3])}: there BatchNorm "
                           "depends on the rest of the batch and Dropout on random masks, so f(x) is not a function "
                           "of x; call model.eval() before measuring")
    ops = _training_ops(f)
    if ops:
        raise MeasureError(f"the program runs {' and '.join(ops[:3])} in training mode: there BatchNorm depends on the "
                           "rest of the batch and Dropout on random masks, so f(x) is not a function of x; export "
                           "the model after model.eval()")


def check_output(output) -> None:
    """output is None, a non-negative int, or 'margin'."""
    if output is None or output == "margin" or (is_integer(output) and output >= 0):
        return
    raise MeasureError(f"output must be None (all outputs), an output index >= 0 or 'margin', got {output!r}")


def _select(out: torch.Tensor, output) -> torch.Tensor:
    """The raw module output [n] / [n, K] reduced as `output` asks: [n] (scalar) or [n, K] (vector)."""
    if out.dim() == 1:
        if output not in (None, 0):
            raise MeasureError(f"output={output!r} needs a module with several outputs; this one has one")
        return out
    if out.dim() != 2:
        raise MeasureError(f"the module must map [n, ...] to [n] or [n, K]; got output shape {tuple(out.shape)}")
    if output is None:
        return out[:, 0] if out.shape[1] == 1 else out
    if output == "margin":
        if out.shape[1] < 2:
            raise MeasureError("output='margin' needs at least two outputs")
        top = out.topk(2, dim=1).values
        return top[:, 0] - top[:, 1]
    if output >= out.shape[1]:
        raise MeasureError(f"output={output} but the module has {out.shape[1]} outputs")
    return out[:, output]


def parts(f, shape: tuple[int, ...], output, probe: torch.Tensor):
    """(values, grads, K) for points [1, n, d] of the flattened input: values -> [1, n] (K = 1) or [1, n, K];
    grads -> [1, n, K * d], the flattened Jacobian (the gradient for K = 1). probe: one point [1, d]."""
    check_mode(f)
    check_output(output)

    def call(x, first: bool = False):     # [n, d] -> [n] or [n, K]
        if x.shape[0] != 0 and x.shape[1] != math.prod(shape):
            raise MeasureError(f"points of dimension {x.shape[1]} do not match the input shape {shape}")
        inputs = x.reshape(x.shape[0], *shape)
        out = checks.call(f, inputs) if first else f(inputs)   # the first call: the model's failure as one line
        return _select(checks.output(out, x.shape[0]), output)

    with torch.no_grad():
        first = call(probe, first=True)
    k = 1 if first.dim() == 1 else first.shape[1]

    def values(x):
        with torch.no_grad():
            return call(x[0])[None]

    def grads(x):
        # by autograd of the sum over the points (each row depends on its own input only): the gradient, or for K
        # outputs the Jacobian's rows, one backward pass of the batch's graph per output
        with torch.enable_grad():
            xi = x[0].detach().requires_grad_(True)
            out = call(xi)
            if k == 1:
                (g,) = torch.autograd.grad(out.sum(), xi)
                return g[None]
            rows = [torch.autograd.grad(out[:, j].sum(), xi, retain_graph=j < k - 1)[0] for j in range(k)]
        return torch.stack(rows, 1).reshape(1, x.shape[1], -1)       # [1, n, K * d]

    return values, grads, k
