"""A small convolutional family: blocks of conv (kernel k, padding k // 2) -> ReLU -> 2x2 pooling (max or average),
then a linear head to the task's K outputs; a few thousand to about 100k parameters on 28x28 images.

Initialization, as the paper's for its MLP (sec. 4.1) with the fan of a convolution: every weight uniform on
[-l, l], l = sqrt(6 alpha / (fan_in + fan_out)) with fan_in = C_in k^2 and fan_out = C_out k^2 for a convolution
(n_in and n_out for the head), biases 0 (alpha = 1 is Glorot's uniform initialization). The numbers come from the
counter-based generator (runtime/rng.py), so a model's initial weights do not depend on M.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from smoothness.models.family import ModuleFamily
from smoothness.models.stack import ParamStack
from smoothness.runtime import rng

POOLS = ("max", "avg")
_INIT_CHUNK = 1 << 22


@dataclass(frozen=True)
class CNNSettings:
    """The CNN family's architecture."""
    channels: tuple[int, ...] = field(default=(8, 16), metadata={"doc": "output channels of each conv block"})
    kernel: int = field(default=3, metadata={"doc": "odd kernel size of every convolution (padding k // 2)"})
    pool: str = field(default="max", metadata={"doc": "2x2 pooling after each block: max or avg"})

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"channels must be one or more positive integers, got {list(self.channels)}")
        if int(self.kernel) != self.kernel or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"kernel must be an odd integer >= 1, got {self.kernel!r}")
        object.__setattr__(self, "kernel", int(self.kernel))
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")


def build(settings: CNNSettings, input_shape: tuple[int, int, int], outputs: int) -> nn.Sequential:
    """One model of the family as an nn.Sequential (its parameters uninitialized: init() sets them)."""
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for out in settings.channels:
        if h < 2 or w < 2:
            raise ValueError(f"{len(settings.channels)} pooling blocks do not fit inputs of shape {list(input_shape)}")
        layers += [nn.Conv2d(c, out, settings.kernel, padding=settings.kernel // 2), nn.ReLU(),
                   nn.MaxPool2d(2) if settings.pool == "max" else nn.AvgPool2d(2)]
        c, h, w = out, h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(c * h * w, outputs)]
    return nn.Sequential(*layers)


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of this shape: [out, in] or [out, in, k, k]."""
    field_size = math.prod(shape[2:])
    return shape[1] * field_size, shape[0] * field_size


class CNNFamily(ModuleFamily):
    """The small CNN family, evaluated through torch.func (models/family.py, ModuleFamily)."""

    name = "cnn"

    def __init__(self, settings: CNNSettings, input_shape, outputs: int = 1):
        if len(input_shape) != 3:
            raise ValueError(f"the cnn family takes images [C, H, W]; this task's inputs are {list(input_shape)}")
        super().__init__(settings, input_shape, outputs, build(settings, tuple(input_shape), outputs))

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
