"""Matrix-multiply precision of the training steps: full float32 (default), TF32 on CUDA, or TF32 emulated.

TF32 (NVIDIA Ampere and later) multiplies float32 matrices on tensor cores after rounding the inputs
to 10 explicit mantissa bits (float32 has 23), accumulating in float32 with float32's range, so each
product carries a relative rounding error of up to 2^-11 ≈ 4.9e-4 instead of 2^-24 ≈ 6e-8.

- "fp32": PyTorch's float32 matmuls (on CUDA with TF32 explicitly off).
- "tf32": TF32 tensor cores for the trainer's matmuls on CUDA (`--tf32`); on a CPU it changes nothing.
- "tf32-emulated": on any device, the inputs of every batched matmul of a step are rounded to TF32
  precision (round to nearest, ties to even) before a float32 matmul. It models the rounding of TF32,
  not its speed, so that the effect of TF32 on training can be studied without a GPU
  (the study in docs/performance.md: `smoothness run quick --matmul-precision tf32-emulated`, then
  `smoothness compare` against the fp32 store).

Only training steps use the mode; the measures are always computed in float32, because the path-length
estimators sum differences of nearby values that TF32 rounding would inflate.
"""
from __future__ import annotations

import contextlib

import torch

MODES = ("fp32", "tf32", "tf32-emulated")
_DROP = 23 - 10                      # float32 mantissa bits that TF32 drops
_HALF = (1 << (_DROP - 1)) - 1       # rounding bias below one half unit of the last kept bit
_MASK = ~((1 << _DROP) - 1)


def check(mode: str) -> str:
    """mode if it is a known matmul precision; a ValueError listing them otherwise."""
    if mode not in MODES:
        raise ValueError(f"unknown matmul precision {mode!r}; choose one of: {', '.join(MODES)}")
    return mode


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 values rounded to TF32's 10 mantissa bits (nearest, ties to even), in the layout of x.

    Integer arithmetic on the bit patterns: add just under half a TF32 unit (plus the kept last bit, for
    ties to even) and clear the 13 dropped bits; a carry into the exponent is the correct rounding up.
    Infinities stay infinite and the NaNs that arithmetic produces (quiet NaNs, payload in the top
    mantissa bit) stay NaN.
    """
    i = x.view(torch.int32)
    r = (i >> _DROP) & 1
    r += i
    r += _HALF
    r &= _MASK
    return r.view(torch.float32)


def _straight_through(x: torch.Tensor) -> torch.Tensor:
    """TF32-rounded values whose gradient is the identity (for regularizers that differentiate a step)."""
    r = round_to_tf32(x.detach())
    return r if not x.requires_grad else x + (r - x).detach()


@contextlib.contextmanager
def emulated_tf32():
    """Within the block, torch.bmm, torch.baddbmm and Tensor.baddbmm_ (the matmuls of models.py) round
    their factor matrices to TF32 precision first; the added matrix and the accumulation stay float32.
    Process-wide while active: meant for one-thread studies, not for concurrent code."""
    bmm, baddbmm, baddbmm_ = torch.bmm, torch.baddbmm, torch.Tensor.baddbmm_
    r = _straight_through

    def new_bmm(a, b, **kw):
        return bmm(r(a), r(b), **kw)

    def new_baddbmm(c, a, b, **kw):
        return baddbmm(c, r(a), r(b), **kw)

    def new_baddbmm_(self, a, b, **kw):
        return baddbmm_(self, r(a), r(b), **kw)

    torch.bmm, torch.baddbmm, torch.Tensor.baddbmm_ = new_bmm, new_baddbmm, new_baddbmm_
    try:
        yield
    finally:
        torch.bmm, torch.baddbmm, torch.Tensor.baddbmm_ = bmm, baddbmm, baddbmm_


@contextlib.contextmanager
def ulp_noise(seed: int = 1):
    """Within the block, torch.bmm, torch.baddbmm and Tensor.baddbmm_ return their result with each element
    changed by -1, 0 or +1 unit in the last place (multiplied by 1 - 2^-24, 1 or 1 + 2^-24, chosen by a seeded
    generator, and rounded: a change of one unit or none).

    It imitates a machine whose BLAS kernels sum in another order (another instruction set, thread count or
    batch shape), so that the effect of last-bit differences on training can be measured on any machine
    (tests/tolerance.py, scripts/rounding_effect.py). Process-wide while active, like emulated_tf32."""
    gen = torch.Generator().manual_seed(seed)
    bmm, baddbmm, baddbmm_ = torch.bmm, torch.baddbmm, torch.Tensor.baddbmm_

    def noisy(t):
        ulps = torch.randint(-1, 2, t.shape, generator=gen).to(t.dtype)
        return t * (1 + 2.0 ** -24 * ulps)

    def new_baddbmm_(self, a, b, **kw):
        self.copy_(noisy(baddbmm_(self.clone(), a, b, **kw)))
        return self

    torch.bmm = lambda a, b, **kw: noisy(bmm(a, b, **kw))
    torch.baddbmm = lambda c, a, b, **kw: noisy(baddbmm(c, a, b, **kw))
    torch.Tensor.baddbmm_ = new_baddbmm_
    try:
        yield
    finally:
        torch.bmm, torch.baddbmm, torch.Tensor.baddbmm_ = bmm, baddbmm, baddbmm_


@contextlib.contextmanager
def cuda_tf32(enabled: bool):
    """TF32 on (or explicitly off) for CUDA float32 matmuls within the block; the old setting is restored."""
    m = torch.backends.cuda.matmul   # fp32_precision: PyTorch 2.9 and later (the package needs 2.13)
    old = m.fp32_precision
    m.fp32_precision = "tf32" if enabled else "ieee"
    try:
        yield
    finally:
        m.fp32_precision = old


def matmuls(mode: str, device: torch.device):
    """The context in which a training step runs under `mode` on `device`."""
    if check(mode) == "tf32-emulated":
        return emulated_tf32()
    if device.type == "cuda":
        return cuda_tf32(mode == "tf32")
    return contextlib.nullcontext()
