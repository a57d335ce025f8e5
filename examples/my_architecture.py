"""A model family of one's own for `smoothness run`: any function that returns an nn.Module (docs/your-architecture.md).

The grid own-architecture.yaml names it as {factory: my_architecture:small_convnet, kwargs: {width: 4}}; run it from
this folder (the current directory is importable), or with this folder on PYTHONPATH:

    cd examples && smoothness run own-architecture.yaml && smoothness report runs/own-architecture

The module takes images [n, 1, 28, 28] and gives one output per image (the +-1 target of a binary task). Every model
of the grid starts from small_convnet(**kwargs) right after torch.manual_seed(seed), its parameters times
sqrt(alpha). No BatchNorm or Dropout: M models train as one stack, and batch statistics would be the stack's.
"""
from torch import nn


def small_convnet(width: int = 4, kernel: int = 5, hidden: int = 32) -> nn.Module:
    """Conv(width, kernel) - ReLU - AvgPool(4) - Flatten - Linear(hidden) - ReLU - Linear(1): 6,441 parameters at the
    defaults (without the hidden layer, most of the example's models stopped at the epoch cap above the threshold)."""
    return nn.Sequential(nn.Conv2d(1, width, kernel, padding=kernel // 2), nn.ReLU(), nn.AvgPool2d(4), nn.Flatten(),
                         nn.Linear(width * 7 * 7, hidden), nn.ReLU(), nn.Linear(hidden, 1))
