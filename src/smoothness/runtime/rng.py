"""Counter-based random numbers: every draw is a pure function of (seed, stream, counters).

Initial weights, the shuffle of every epoch and the segment end points of the sampled measures
are all drawn here. Because nothing depends on a generator's hidden state, a model gets exactly
the same numbers when it is trained alone, inside a batch of a thousand models, on the CPU or on
a GPU; and the numbers for many models are drawn in one vectorized call.

The mixer is the 32-bit integer hash "lowbias32" (C. Wellons, "Prospecting for hash functions",
2018; constants 0x7feb352d and 0x846ca68b). Arithmetic is done in int64 on values below 2**32,
split so that no product overflows.
"""
from __future__ import annotations

import torch

from smoothness.runtime.values import is_integer

MASK32 = 0xFFFFFFFF
SEED_LIMIT = 1 << 32   # a seed is one 32-bit word of the hash: 0 <= seed < 2**32 (larger ones would wrap)

# One stream id per kind of draw, so that draws of different kinds never coincide.
STREAM_INIT = 1
STREAM_SHUFFLE = 2
STREAM_SEGMENTS = 3
STREAM_SUBSET = 4
STREAM_POINTS = 5
STREAM_TRAIN_SEED = 6


def derived_seed(seed: int, name: str, value: float) -> int:
    """A seed drawn from (seed, name, value), e.g. the training seed of a regularized model independent of its
    baseline's (grid key independent_seeds): a 32-bit hash of the seed, the name's CRC-32 and the float64 bits of
    value. Stable across machines and versions of Python."""
    import struct
    import zlib
    bits = struct.unpack("<Q", struct.pack("<d", float(value)))[0]
    return int(hash_words(int(seed), STREAM_TRAIN_SEED, zlib.crc32(name.encode()), bits & MASK32, bits >> 32))


def check_seed(seed, what: str = "seed") -> int:
    """seed as an int if it is an integer 0 <= seed < 2**32, else a ConfigError naming `what`.

    hash_words keeps only the low 32 bits of each word, so seeds outside this range would silently
    give the numbers of another seed (2**32 those of 0, -1 those of 2**32 - 1)."""
    if not is_integer(seed) or not 0 <= seed < SEED_LIMIT:
        from smoothness.errors import ConfigError
        raise ConfigError(f"{what}: expected an integer 0 <= seed < 2**32 (4294967296), got {seed!r}")
    return int(seed)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for 0 <= x < 2**32, without int64 overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 avalanche mixer on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hash_words(*words, device=None) -> torch.Tensor:
    """Hash a sequence of integer words (ints or broadcastable int tensors) to 32-bit values.

    Python ints stay Python ints until they meet a tensor word (no host-to-device copy of a scalar, which would
    stall a CUDA stream); the arithmetic, and so the result, is the same either way."""
    h = 0x9E3779B9
    for w in words:
        w = w & MASK32 if isinstance(w, int) else torch.as_tensor(w, dtype=torch.int64, device=device) & MASK32
        h = mix32(h ^ w)
    h = mix32(h + 0x632BE5AB & MASK32)
    return torch.tensor(h, dtype=torch.int64, device=device) if isinstance(h, int) else h


def uniform(*words, device=None) -> torch.Tensor:
    """Float32 uniform numbers in [0, 1) with 24 random bits, one per broadcast element of words."""
    h = hash_words(*words, device=device)
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))


def randint(high, *words, device=None) -> torch.Tensor:
    """Integers uniform on [0, high) (high may be a broadcastable tensor); int64."""
    h = hash_words(*words, device=device)
    return (h * torch.as_tensor(high, dtype=torch.int64, device=device)) >> 32


def permutation_keys(n_valid: torch.Tensor, length: int, *words) -> torch.Tensor:
    """Row-wise random permutations of 0..n_valid[...]-1, padded with n_valid.. at the end.

    n_valid: int tensor of any shape S (e.g. [M]); words broadcast against S + [1]; returns S + [length]
    int64. A row's permutation depends only on its words, n_valid and (for the padding) length.
    """
    device = n_valid.device
    idx = torch.arange(length, device=device)
    keys = hash_words(*words, idx, device=device).expand(*n_valid.shape, length)
    keys = torch.where(idx < n_valid[..., None], keys, idx + (1 << 33))
    return torch.argsort(keys, dim=-1, stable=True)
