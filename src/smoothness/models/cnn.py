"""A small convolutional family: blocks of conv (kernel k, padding k // 2) -> ReLU -> 2x2 pooling (max or average),
then a linear head to the task's K outputs; a few thousand to about 100k parameters on 28x28 images.

Initialization, as the paper's for its MLP (sec. 4.1) with the fan of a convolution: every weight uniform on
[-l, l], l = sqrt(6 alpha / (fan_in + fan_out)) with fan_in = C_in k^2 and fan_out = C_out k^2 for a convolution
(n_in and n_out for the head), biases 0 (alpha = 1 is Glorot's uniform initialization). The numbers come from the
counter-based generator (runtime/rng.py), so a model's initial weights do not depend on M.

M models are evaluated as one program of grouped convolutions (convstack.py), their input gradients written out;
one model as a module is the nn.Sequential of build().
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from smoothness.models import convstack
from smoothness.models.family import FrozenMapping, ModuleFamily, thawed
from smoothness.models.stack import ParamStack
from smoothness.runtime import rng
from smoothness.runtime.values import is_integer

POOLS = ("max", "avg")
_INIT_CHUNK = 1 << 22


MAX_CHANNELS = 4096   # channels of one block: far above any CNN this family is meant for
MAX_PARAMS = 50_000_000   # parameters of one model (200 MB in float32): the family is meant for thousands to ~100k


@dataclass(frozen=True)
class CNNSettings:
    """The CNN family's architecture."""
    channels: tuple[int, ...] = field(default=(8, 16), metadata={"doc": "output channels of each conv block"})
    kernel: int = field(default=3, metadata={"doc": "odd kernel size of every convolution (padding k // 2)"})
    pool: str = field(default="max", metadata={"doc": "2x2 pooling after each block: max or avg"})

    def __post_init__(self):
        if not isinstance(self.channels, (list, tuple)) or isinstance(self.channels, FrozenMapping):
            raise ValueError(f"channels must be a list of positive integers, one per block, got "
                             f"{thawed(self.channels)!r}")
        if not all(is_integer(c) for c in self.channels):
            raise ValueError(f"channels must be positive integers, one per block, got {thawed(self.channels)}")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"channels must be one or more positive integers, got {list(self.channels)}")
        if max(self.channels) > MAX_CHANNELS:
            raise ValueError(f"channels: at most {MAX_CHANNELS:,} per block (a larger value is a typo or a network "
                             f"no machine trains here), got {max(self.channels):,}")
        if not is_integer(self.kernel) or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"kernel must be an odd integer >= 1, got {thawed(self.kernel)!r}")
        object.__setattr__(self, "kernel", int(self.kernel))
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {thawed(self.pool)!r}")


def check(settings: CNNSettings, input_shape: tuple, outputs: int) -> None:
    """A ValueError where the settings do not make a model of this family for these inputs: inputs that are not
    images [C, H, W], a kernel wider than them, more parameters than MAX_PARAMS, or more pooling blocks than they
    halve into. Found without building it (a grid is checked when it is read)."""
    if len(input_shape) != 3:
        raise ValueError(f"the cnn family takes images [C, H, W]; this task's inputs are {list(input_shape)}")
    _, h, w = input_shape
    if settings.kernel > min(h, w):
        raise ValueError(f"kernel {settings.kernel} is wider than the inputs ({h}x{w}): choose at most {min(h, w)}")
    n = n_params(settings, tuple(input_shape), outputs)
    if n > MAX_PARAMS:
        raise ValueError(f"channels {list(settings.channels)} with kernel {settings.kernel} make {n:,} parameters per "
                         f"model, more than the limit of {MAX_PARAMS:,} (the family is meant for thousands to ~100k)")
    if min(h, w) >> (len(settings.channels) - 1) < 2:   # each block before the last halves the inputs
        raise ValueError(f"{len(settings.channels)} pooling blocks do not fit inputs of shape {list(input_shape)}")


def build(settings: CNNSettings, input_shape: tuple[int, int, int], outputs: int) -> nn.Sequential:
    """One model of the family as an nn.Sequential (its parameters uninitialized: init() sets them)."""
    check(settings, input_shape, outputs)
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for out in settings.channels:
        layers += [nn.Conv2d(c, out, settings.kernel, padding=settings.kernel // 2), nn.ReLU(),
                   nn.MaxPool2d(2) if settings.pool == "max" else nn.AvgPool2d(2)]
        c, h, w = out, h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(c * h * w, outputs)]
    return nn.Sequential(*layers)


def n_params(settings: CNNSettings, input_shape: tuple[int, int, int], outputs: int) -> int:
    """The parameters of one model, counted before any is allocated (blocks whose pooling does not fit count
    up to the first of them; build() refuses those)."""
    c, h, w = input_shape
    total = 0
    for out in settings.channels:
        total += out * c * settings.kernel ** 2 + out
        c, h, w = out, max(h // 2, 0), max(w // 2, 0)
    return total + c * h * w * outputs + outputs


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of this shape: [out, in] or [out, in, k, k]."""
    field_size = math.prod(shape[2:])
    return shape[1] * field_size, shape[0] * field_size


class CNNFamily(ModuleFamily):
    """The small CNN family: stacks evaluated as grouped convolutions (convstack.py), one model as its
    nn.Sequential (models/family.py, ModuleFamily)."""

    name = "cnn"

    def __init__(self, settings: CNNSettings, input_shape, outputs: int = 1):
        super().__init__(settings, input_shape, outputs, build(settings, tuple(input_shape), outputs))

    def images(self, p: ParamStack, x: torch.Tensor) -> torch.Tensor:
        """x (flattened points [M, n, d] or [n, d], shared) as images [M, n, C, H, W] of p's dtype and device."""
        x = self.points(p, x)
        return x.reshape(x.shape[0], x.shape[1], *self.input_shape)

    def forward(self, p: ParamStack, x: torch.Tensor) -> torch.Tensor:
        out, _ = convstack.forward(list(p.values), self.images(p, x), self.settings.kernel, self.settings.pool)
        return out

    def input_grads(self, p: ParamStack, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """The input gradients [M, n, d] (K = 1) or flattened Jacobians [M, n, K d], written out (convstack.py):
        differentiable in p's tensors by first derivatives only."""
        xs = self.images(p, x).detach()
        m, n = xs.shape[:2]
        with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
            values = list(p.values)
            _, state = convstack.forward(values, xs, self.settings.kernel, self.settings.pool)
            rows = [convstack.per_model(convstack.input_gradient(values, state, j, self.settings.kernel,
                                                                 self.settings.pool), m).reshape(m, n, -1)
                    for j in range(self.outputs)]
        return rows[0] if len(rows) == 1 else torch.stack(rows, 2).reshape(m, n, -1)

    def init(self, seeds, alpha, device=None) -> ParamStack:
        seeds = torch.as_tensor(seeds, dtype=torch.int64, device=device).reshape(-1)
        m = seeds.shape[0]
        alpha = torch.as_tensor(alpha, dtype=torch.float64, device=device).expand(m)
        values = []
        for layer, (_, t) in enumerate(self.template.named_parameters()):
            shape = tuple(t.shape)
            if len(shape) == 1:   # a bias
                values.append(torch.zeros(m, *shape, device=device))
                continue
            n_in, n_out = _fans(shape)
            bound = (6.0 * alpha / (n_in + n_out)).sqrt().to(torch.float32).reshape(m, *[1] * len(shape))
            idx = torch.arange(math.prod(shape), device=device).reshape(1, *shape)
            w = torch.empty(m, *shape, device=device)
            step = max(1, _INIT_CHUNK // math.prod(shape))
            for a in range(0, m, step):
                u = rng.uniform(seeds[a:a + step].reshape(-1, *[1] * len(shape)), rng.STREAM_INIT, layer, idx,
                                device=device)
                w[a:a + step] = (2.0 * u - 1.0) * bound[a:a + step]
            values.append(w)
        return ParamStack(self.names, values)
