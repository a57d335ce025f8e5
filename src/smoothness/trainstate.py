"""The batched trainer's state: per-model rows of the models currently in the batch (ActiveModels), and the settings
every step of one batched program shares (StepSettings)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch

from .models import MLPStack

_BUFFERS = {"buffers": True}   # field metadata: a list of tensors, each with one row per model


def _rows_of(value, k: torch.Tensor, keep: np.ndarray, buffers: bool):
    """The rows `keep` of one per-model field of ActiveModels (k: the same rows as a device tensor)."""
    if buffers:
        return [o[k] for o in value]
    if isinstance(value, np.ndarray):
        return value[keep]
    if isinstance(value, MLPStack):
        return value.select(k)
    if isinstance(value, list):
        return [value[i] for i in keep]
    return value[k]


def _joined(a, b, nmax: int, buffers: bool):
    """One per-model field of ActiveModels with the rows of b after those of a; [A, n] tensors widened to nmax."""
    if buffers:
        return [torch.cat([x, y]) for x, y in zip(a, b)]
    if isinstance(a, np.ndarray):
        return np.concatenate([a, b])
    if isinstance(a, MLPStack):
        return MLPStack.cat([a, b])
    if isinstance(a, list):
        return a + b

    def widen(t):
        if t.dim() != 2 or t.shape[1] == nmax:
            return t
        return torch.cat([t, t.new_zeros(t.shape[0], nmax - t.shape[1])], 1)
    return torch.cat([widen(a), widen(b)])


@dataclass
class ActiveModels:
    """Per-model state of the models currently in the batch: row r of every field belongs to model ids[r].

    keep() and join() are derived from the fields (as MLPStack's select and cat are), so a new field is
    selected and concatenated with the others without being listed anywhere else."""
    ids: list[int]
    params: MLPStack
    opt_state: list[torch.Tensor] = field(metadata=_BUFFERS)  # optimizer buffers, [A, ...] (optimizers.init_state)
    idx: torch.Tensor               # [A, Nmax] indices into the pool (padded with 0)
    y: torch.Tensor                 # [A, Nmax] targets (padded with 0)
    perm: torch.Tensor              # [A, Nmax] the current epoch's shuffle of positions 0..n-1
    n: torch.Tensor                 # [A] training set sizes
    lr: torch.Tensor                # [A] learning rates
    lam: torch.Tensor               # [A] regularization strengths
    rho: torch.Tensor               # [A] SAM radii (0 for other optimizers)
    loss_sum: torch.Tensor          # [A] sum of the squared errors of the current epoch so far
    seed: torch.Tensor              # [A] int64
    n_host: np.ndarray              # [A] n, on the host
    pos: np.ndarray                 # [A] position in the current epoch
    epoch: np.ndarray               # [A] epochs finished
    steps: np.ndarray               # [A] steps taken
    start: np.ndarray               # [A] perf_counter() at admission
    # Shuffles of upcoming epochs, computed several epochs at a time (one hash call instead of one per epoch):
    # ahead[r, k] is the permutation of epoch ahead_base[r] + k. None: not built yet (dropped by join).
    ahead: torch.Tensor | None = None   # [A, K, Nmax]
    ahead_base: np.ndarray | None = None

    def __len__(self):
        return len(self.ids)

    def _present(self):
        return [(f.name, bool(f.metadata.get("buffers"))) for f in fields(self) if getattr(self, f.name) is not None]

    def keep(self, keep: np.ndarray) -> None:
        """Keep only the rows `keep`, in place."""
        k = torch.as_tensor(keep, dtype=torch.long, device=self.seed.device)
        for name, buffers in self._present():
            setattr(self, name, _rows_of(getattr(self, name), k, keep, buffers))

    def join(self, new: "ActiveModels") -> None:
        """Append the rows of `new`, in place; the look-ahead shuffles are dropped (rows and widths changed)."""
        nmax = max(self.idx.shape[1], new.idx.shape[1])
        self.ahead = self.ahead_base = None
        for name, buffers in self._present():
            setattr(self, name, _joined(getattr(self, name), getattr(new, name), nmax, buffers))


@dataclass(frozen=True)
class StepSettings:
    """What every step of one batched program shares: one regularizer and one optimizer per program."""
    regularizer: str = "none"
    optimizer: str = "sgd"
