"""The device a command runs on, with errors worded for the command line: resolving 'auto', 'cpu' and
'cuda', TF32 only on CUDA, and how many trained models are measured together."""
from __future__ import annotations

import torch

from smoothness.errors import ConfigError


def resolve_device(name: str | None, allow_mps: bool = False) -> torch.device:
    """'cpu', 'cuda' (error if absent), 'auto' (CUDA when available), or, where allowed, 'mps' (Apple GPUs; error
    where PyTorch has no MPS backend)."""
    if isinstance(name, torch.device):
        return resolve_device(str(name), allow_mps)
    name = name or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but no CUDA device is available to PyTorch")
    if name.split(":")[0] == "mps":
        if not allow_mps:
            raise ConfigError("--device mps: training and the grids run on cpu or cuda; `smoothness measure` runs "
                              "on mps")
        if not (torch.backends.mps.is_built() and torch.backends.mps.is_available()):
            raise ConfigError("--device mps was requested but this PyTorch has no MPS device (Apple silicon GPUs, "
                              "with a PyTorch built for macOS)")
        return torch.device(name)
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda or auto" + (", or mps" if allow_mps else ""))
    return torch.device(name)


def check_matmul_precision(modes, device) -> None:
    """TF32 runs on CUDA only (on a CPU it would silently train in float32)."""
    if "tf32" in modes and resolve_device(device).type != "cuda":
        raise ConfigError("matmul precision tf32 needs a CUDA device; to study its effect on a CPU use "
                          "tf32-emulated")


def measure_batch_size(requested: int | None, device) -> int:
    """Trained models measured together: `requested` (at least 1), or by default one on the CPU, where
    batching measures gains nothing (see bench), so each model is measured the moment it finishes, and
    128 on a GPU, where one model leaves it idle."""
    if requested is None:
        return 1 if resolve_device(device).type == "cpu" else 128
    if requested < 1:
        raise ConfigError(f"invalid measure batch: {requested} (use a positive number)")
    return requested


def memory_budget(device) -> int:
    """Bytes one batched program may use: 80% of the free memory of a GPU; on a CPU half of the memory the
    kernel reports available (MemAvailable), or a quarter of the physical memory where that cannot be read."""
    device = resolve_device(device)
    if device.type == "cuda":
        return int(0.8 * torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (AttributeError, ValueError, OSError):
        return 4 << 30
