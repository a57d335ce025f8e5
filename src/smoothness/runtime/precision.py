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

Only training steps use the mode; the measures are always computed in float32 (`strict_fp32`, also when the
user set TF32 or bfloat16 matmuls globally), because the path-length estimators sum differences of nearby
values that TF32 rounding would inflate.
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


# The fp32 flags of PyTorch have a legacy API (torch.set_float32_matmul_precision, backends.cudnn.allow_tf32) and
# a new one (backends.<backend>.<op>.fp32_precision). Setting a value with the new API that the legacy one cannot
# express makes every later legacy read raise ("mix of the legacy and new APIs"), and torch.compile's inductor reads
# the legacy flags. So the contexts below set the legacy API, whose setters keep both views consistent, and put
# back exactly what was there before, a user's own mixed state included.
_NEW_FLAGS = (("cuda", "matmul"), ("mkldnn", "matmul"), ("cudnn", "conv"), ("mkldnn", "conv"))


def flags() -> dict[str, str]:
    """The new API's fp32 precision of every backend and op the package runs (cuBLAS and oneDNN matmuls, cuDNN and
    oneDNN convolutions): 'ieee', 'tf32', 'bf16' or 'none' (inherit)."""
    b = torch.backends
    return {f"{a}.{op}": getattr(getattr(b, a), op).fp32_precision for a, op in _NEW_FLAGS}


def _legacy_flags():
    """(torch.get_float32_matmul_precision(), cudnn.allow_tf32), or None where the user mixed the two APIs."""
    try:
        return torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    except RuntimeError:
        return None


def _set_new_flags(values: dict[str, str]) -> None:
    for key, v in values.items():
        a, op = key.split(".")
        getattr(getattr(torch.backends, a), op).fp32_precision = v


@contextlib.contextmanager
def _fp32_flags(tf32_matmuls: bool):
    legacy, before = _legacy_flags(), flags()
    torch.set_float32_matmul_precision("high" if tf32_matmuls else "highest")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.mkldnn.conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        if legacy is not None:
            torch.set_float32_matmul_precision(legacy[0])
            torch.backends.cudnn.allow_tf32 = legacy[1]
        now = flags()
        _set_new_flags({k: v for k, v in before.items() if now[k] != v})


def strict_fp32():
    """Within the block (or the decorated function) every float32 matmul and convolution runs in full float32 on
    every backend, whatever the user set globally: torch.set_float32_matmul_precision("high") would give TF32 on
    CUDA, and "medium" bfloat16 matmuls through oneDNN on CPUs with AVX-512 BF16 or AMX. The measures and fp32
    training run in it; the old flags are restored after."""
    return _fp32_flags(False)


def cuda_tf32(enabled: bool):
    """TF32 on (or explicitly off) for float32 matmuls within the block; convolutions in float32; the old flags are
    restored after."""
    return _fp32_flags(enabled)


def matmuls(mode: str, device: torch.device):
    """The context in which a training step runs under `mode` on `device`: full float32 unless mode is 'tf32' on
    CUDA; 'tf32-emulated' rounds the factors of full-float32 matmuls."""
    if check(mode) == "tf32-emulated":
        return _both(strict_fp32(), emulated_tf32())
    return cuda_tf32(mode == "tf32" and device.type == "cuda")


@contextlib.contextmanager
def _both(a, b):
    with a, b:
        yield
