"""M convolutional nets of one architecture as one tensor program: grouped convolutions in channels_last memory.

The images of M models, [M, B, C, H, W], become one batch [B, M * C, H, W] whose channels hold model m's channels
as group m; every convolution is one call with groups = M, the pooling runs on the stacked tensor, and the linear
head is one batched matmul. On a CPU those are oneDNN's grouped convolutions and PyTorch's channels_last pooling,
which are the fast ones there (docs/performance.md: 2.2-2.8x a loop of modules at M = 16, against 0.9-1.6x for
torch.func's vmap).

The input gradient (for the gradient-norm penalty, eq. 4, and its path integrals) is written out: the ReLUs' and
poolings' backward as their ATen functions and each convolution's transpose as a convolution with the flipped
kernel, so that the gradient of a penalty on it needs first derivatives only (PyTorch computes the double
backward of a grouped convolution one group at a time).

The parameters are those of the one-model nn.Sequential of models/cnn.py, in its order, each with a leading model
axis: per block conv weight [M, O, C, k, k] and bias [M, O]; then the head's weight [M, K, F] and bias [M, K].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class _ChannelsLastGrad(torch.autograd.Function):
    """The identity, whose backward hands on its gradient in channels_last memory format: the head's gradient then
    reaches the convolutions' backward in their layout instead of being copied into it there."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return g.contiguous(memory_format=torch.channels_last)


class _MaxPoolBackward(torch.autograd.Function):
    """The backward of 2 x 2 max pooling as a linear function of the pooled gradient g: each value sent to the
    position its window's maximum came from (indices of F.max_pool2d on z). Its own backward gathers from those
    positions on channels_last views (autograd's gather would first copy the tensor into [B, C, H, W] order)."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(idx)
        return torch.ops.aten.max_pool2d_with_indices_backward(g, z, [2, 2], [2, 2], [0, 0], [1, 1], False, idx)

    @staticmethod
    def backward(ctx, gz: torch.Tensor):
        (idx,) = ctx.saved_tensors
        b, c, h, w = gz.shape
        rows = gz.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(b, h * w, c)
        at = idx.permute(0, 2, 3, 1).reshape(b, -1, c)
        out = rows.gather(1, at).view(b, idx.shape[2], idx.shape[3], c).permute(0, 3, 1, 2)
        return out, None, None


def stack_images(x: torch.Tensor) -> torch.Tensor:
    """Images x [M, B, C, H, W] as the input of the grouped convolutions: [B, M * C, H, W], model m's channels the
    m-th group, in channels_last memory ([B, H, W, M, C])."""
    m, b, c, hh, ww = x.shape
    return x.permute(1, 3, 4, 0, 2).contiguous().view(b, hh, ww, m * c).permute(0, 3, 1, 2)


def per_model(g: torch.Tensor, m: int) -> torch.Tensor:
    """[B, M * C, H, W] (any memory format) as [M, B, C, H, W]."""
    b, mc, hh, ww = g.shape
    return g.reshape(b, m, mc // m, hh, ww).transpose(0, 1)


def forward(values: list[torch.Tensor], x: torch.Tensor, kernel: int, pool: str):
    """The outputs [M, B, K] of the M nets at their images x [M, B, C, H, W], and what input_gradient needs (the
    pooled features' shape; per block the convolution's output, the pooling's indices and the ReLU's output)."""
    m = x.shape[0]
    h = stack_images(x)
    b = h.shape[0]
    cache = []
    for layer in range(len(values) // 2 - 1):
        w, bias = values[2 * layer], values[2 * layer + 1]
        z = F.conv2d(h, w.reshape(-1, *w.shape[2:]), bias.reshape(-1), padding=kernel // 2, groups=m)
        if pool == "max":
            pooled, idx = F.max_pool2d(z, 2, return_indices=True)
            h = act = torch.relu(pooled)   # ReLU after the max: the same values and gradients, on 4x fewer numbers
        else:
            idx, act = None, torch.relu(z)
            h = F.avg_pool2d(act, 2)
        cache.append((z, idx, act))
    head_w, head_b = values[-2], values[-1]
    feats = _ChannelsLastGrad.apply(h).reshape(b, m, head_w.shape[-1])
    out = torch.baddbmm(head_b[:, None, :], feats.transpose(0, 1), head_w.transpose(1, 2))
    return out, (h.shape, cache)


def input_gradient(values: list[torch.Tensor], state, j: int, kernel: int, pool: str) -> torch.Tensor:
    """The gradient of output j with respect to the images, [B, M * C, H, W], given forward()'s state: written out
    (module docstring), differentiable in the parameters by first derivatives only."""
    top_shape, cache = state
    m = values[0].shape[0]
    g = values[-2][:, j, :].reshape(1, *top_shape[1:]).expand(top_shape)
    for layer in range(len(cache) - 1, -1, -1):
        # z and the ReLU's output give shapes and masks only: detached, no zero gradients are formed for them
        z, idx, act = (t.detach() if t is not None else None for t in cache[layer])
        if pool == "max":
            g = _MaxPoolBackward.apply(torch.ops.aten.threshold_backward(g, act, 0), z, idx)
        else:
            g = torch.ops.aten.avg_pool2d_backward(g, z, [2, 2], [2, 2], [0, 0], False, True, None)
            g = torch.ops.aten.threshold_backward(g, act, 0)
        w = values[2 * layer]                                           # [M, O, C, k, k]
        flipped = w.transpose(1, 2).flip(-2, -1).reshape(m * w.shape[2], w.shape[1], kernel, kernel)
        g = F.conv2d(g, flipped, padding=kernel // 2, groups=m)
    return g
