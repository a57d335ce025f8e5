"""The batched trainer's state: per-model rows of the models currently in the batch (ActiveModels), the settings
every step of one batched program shares (StepSettings), and the two ways host and device exchange values in the
training loop without stalling the device: uploads through pinned memory and a polled status (StatusPoll); and
snapshots of models part way through training, taken out of the batch and put back in."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from enum import IntEnum

import numpy as np
import torch

from smoothness import paper
from smoothness.models import MLPStack, ParamStack, shapes_of
from smoothness.training.spec import Snapshot

_BUFFERS = {"buffers": True}   # field metadata: a list of tensors, each with one row per model



class Status(IntEnum):
    """A model's status, held on the device as an int64: RUNNING until an epoch end applies the stopping rule
    (step.epoch_end); its label is the status recorded in the store."""
    RUNNING = 0
    CONVERGED = 1
    NOT_CONVERGED = 2
    DIVERGED = 3

    @property
    def label(self) -> str:
        """'running', 'converged', 'not_converged' or 'diverged'."""
        return self.name.lower()


STATUSES = tuple(s.label for s in Status)
RUNNING, CONVERGED, NOT_CONVERGED, DIVERGED = Status


def upload(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Host values (a list or array) as a new tensor on `device`. On CUDA through pinned memory with a non-blocking
    copy: a copy from pageable memory synchronizes the stream, so the host would wait for every queued step."""
    t = torch.tensor(np.asarray(values), dtype=dtype)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _rows_of(value, k: torch.Tensor, keep: np.ndarray, buffers: bool):
    """The rows `keep` of one per-model field of ActiveModels (k: the same rows as a device tensor)."""
    if buffers:
        return [o[k] for o in value]
    if isinstance(value, np.ndarray):
        return value[keep]
    if isinstance(value, (MLPStack, ParamStack)):
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
    if isinstance(a, (MLPStack, ParamStack)):
        return type(a).cat([a, b])
    if isinstance(a, list):
        return a + b

    def widen(t):
        if t.dim() != 2 or t.shape[1] == nmax:
            return t
        return torch.cat([t, t.new_zeros(t.shape[0], nmax - t.shape[1])], 1)
    return torch.cat([widen(a), widen(b)])


class _Rows:
    """Per-model rows that can be selected and appended (keep, join), derived from the dataclass's fields: a new
    field is selected and concatenated with the others without being listed anywhere else. A field that is itself
    such a group is handled recursively; one marked _BUFFERS is a list of tensors with one row per model."""

    def _present(self):
        return [(f.name, bool(f.metadata.get("buffers"))) for f in fields(self) if getattr(self, f.name) is not None]

    def keep_rows(self, k: torch.Tensor, keep: np.ndarray) -> None:
        """Keep only the rows `keep` (k: the same rows as a device tensor), in place."""
        for name, buffers in self._present():
            value = getattr(self, name)
            if isinstance(value, _Rows):
                value.keep_rows(k, keep)
            else:
                setattr(self, name, _rows_of(value, k, keep, buffers))

    def join_rows(self, new: "_Rows", nmax: int) -> None:
        """Append the rows of `new` (of the same type), in place; [A, n] tensors are widened to nmax."""
        for name, buffers in self._present():
            value = getattr(self, name)
            if isinstance(value, _Rows):
                value.join_rows(getattr(new, name), nmax)
            else:
                setattr(self, name, _joined(value, getattr(new, name), nmax, buffers))


@dataclass
class Hyper(_Rows):
    """Each model's hyperparameters."""
    lr: torch.Tensor                # [A] learning rates
    lam: torch.Tensor               # [A] regularization strengths
    rho: torch.Tensor               # [A] SAM radii (0 for other optimizers)
    threshold: torch.Tensor         # [A] float64 loss thresholds of the stopping rule
    max_epochs: torch.Tensor        # [A] int64 epoch caps
    seed: torch.Tensor              # [A] int64 seeds of the initial weights and the shuffles


@dataclass
class TrainingData(_Rows):
    """Each model's training set and the order in which it is read."""
    idx: torch.Tensor               # [A, Nmax] indices into the pool (padded with 0)
    y: torch.Tensor                 # [A, Nmax] targets (padded with 0)
    perm: torch.Tensor              # [A, Nmax] the current epoch's shuffle of positions 0..n-1
    n: torch.Tensor                 # [A] training set sizes
    n_host: np.ndarray              # [A] n, on the host
    # Shuffles of upcoming epochs, computed several epochs at a time (one hash call instead of one per epoch):
    # ahead[r, k] is the permutation of epoch ahead_base[r] + k (NO_EPOCH: none yet). None: not built yet (dropped
    # by join).
    ahead: torch.Tensor | None = None   # [A, K, Nmax]
    ahead_base: np.ndarray | None = None
    ahead_base_d: torch.Tensor | None = None   # ahead_base on the device


@dataclass
class Counters(_Rows):
    """Where each model is: on the device (the step reads them there) and mirrored on the host. Both follow from the
    training sizes alone (an epoch is ceil(n / batch) steps), so the host knows them without asking the device."""
    pos_d: torch.Tensor             # [A] position in the current epoch
    epoch_d: torch.Tensor           # [A] epochs finished (also counted on for frozen models)
    steps_d: torch.Tensor           # [A] steps taken
    loss_sum: torch.Tensor          # [A] sum of the per-example losses of the current epoch so far
    wrong: torch.Tensor             # [A] misclassified points of the current epoch so far (cross-entropy's rule)
    pos: np.ndarray                 # [A] mirror of pos_d
    epoch: np.ndarray               # [A] mirror of epoch_d
    steps: np.ndarray               # [A] mirror of steps_d


@dataclass
class Outcome(_Rows):
    """The stopping rule's outcome on the device, and what the host has made of it. A finished model is frozen in
    place (`frozen`: its updates are multiplied by 0) and stays in the batch until the host has read its row
    (StatusPoll) and compacts the batch."""
    status: torch.Tensor            # [A] int64, one of RUNNING, CONVERGED, NOT_CONVERGED, DIVERGED
    frozen: torch.Tensor            # [A] bool: finished, its weights are those at its finish
    final_loss: torch.Tensor        # [A] float32 the epoch loss at which it finished
    final_epoch: torch.Tensor       # [A] int64 epochs at the finish
    final_steps: torch.Tensor       # [A] int64 steps at the finish
    last_loss: torch.Tensor         # [A] float32 the last epoch loss (NaN before the first epoch end)
    start: np.ndarray               # [A] perf_counter() at admission (less the seconds before a resumed snapshot)
    saved: np.ndarray               # [A] perf_counter() of the last snapshot handed out, or of admission
    reported: np.ndarray            # [A] bool: the host has read this model's finish and handed it out


@dataclass
class ActiveModels(_Rows):
    """Per-model state of the models currently in the batch, in groups (hyperparameters, training data, counters,
    outcome): row r of every field belongs to model ids[r]."""
    ids: list[int]
    params: MLPStack
    opt_state: list[torch.Tensor] = field(metadata=_BUFFERS)  # optimizer buffers, [A, ...] (optimizers.init_state)
    hyper: Hyper = None
    data: TrainingData = None
    counters: Counters = None
    outcome: Outcome = None

    def __len__(self):
        return len(self.ids)

    def rates(self, a: int = 0, b: int | None = None) -> torch.Tensor:
        """The learning rates the step applies to models a..b-1: 0 for a frozen (finished) model, whose update is
        thereby nothing (the batch keeps its shape until the host compacts it). [b - a]."""
        return torch.where(self.outcome.frozen[a:b], 0.0, self.hyper.lr[a:b])

    def snapshot(self) -> torch.Tensor:
        """[5, A] float64 on the device: status, final_loss, final_epoch, final_steps and last_loss (exact for counts
        below 2^53), for StatusPoll."""
        o = self.outcome
        return torch.stack([t.to(torch.float64) for t in (o.status, o.final_loss, o.final_epoch, o.final_steps,
                                                            o.last_loss)])

    def keep(self, keep: np.ndarray) -> None:
        """Keep only the rows `keep`, in place."""
        self.keep_rows(upload(keep, torch.long, self.hyper.seed.device), keep)

    def join(self, new: "ActiveModels") -> None:
        """Append the rows of `new`, in place; the look-ahead shuffles are dropped (rows and widths changed)."""
        nmax = max(self.data.idx.shape[1], new.data.idx.shape[1])
        self.data.ahead = self.data.ahead_base = self.data.ahead_base_d = None
        new.data.ahead = new.data.ahead_base = new.data.ahead_base_d = None
        self.join_rows(new, nmax)


NO_EPOCH = -(1 << 40)   # TrainingData.ahead_base of a row whose look-ahead shuffles are not computed yet


@dataclass(frozen=True)
class StepSettings:
    """What every step of one batched program shares: one regularizer (with its points per segment, for the
    path-length penalties), one optimizer and one loss per program."""
    regularizer: str = "none"
    optimizer: str = "sgd"
    penalty_points: int = paper.PENALTY_POINTS
    loss: str = "mse"


class StatusPoll:
    """The host's view of ActiveModels.snapshot(), read without making the device wait.

    On a CPU it is read at every step that ends some epoch (reading costs nothing there). On CUDA it is copied
    into pinned memory by a non-blocking copy at most every `every` steps, and only after an epoch end since the
    last copy (statuses change only there); poll() returns it once the copy's event has completed and None
    until then. `lag` makes a CPU behave the same way, the copy arriving `lag` polls later (for tests of the
    CUDA logic on a CPU). Between a copy and its reading the batch's rows must not change: the trainer compacts
    or admits only right after a reading, when no copy is pending."""

    def __init__(self, device: torch.device, every: int = 16, lag: int | None = None):
        self.cuda = device.type == "cuda"
        self.deferred = self.cuda or lag is not None
        self.every = max(1, int(every)) if self.deferred else 1
        self.lag = lag or 0
        self.pending = None     # (the copy, its event on CUDA or the polls left until it arrives)
        self.since = 0          # steps since the last copy
        self.changed = False    # an epoch ended since the last copy

    def poll(self, act: ActiveModels, epoch_ended: bool) -> np.ndarray | None:
        """The [5, A] snapshot as a float64 array, or None when there is none to read at this step."""
        self.changed |= epoch_ended
        self.since += 1
        if self.pending is None:
            if self.changed and self.since >= self.every:
                self.pending, self.changed, self.since = self._copy(act.snapshot()), False, 0
            if not self.deferred and self.pending is not None:
                return self._take()
            return None
        return self._take() if self._arrived() else None

    def _copy(self, snap: torch.Tensor):
        if not self.cuda:
            return snap.numpy(), self.lag   # snapshot() is a new tensor: nothing writes it later
        buf = torch.empty(snap.shape, dtype=snap.dtype, pin_memory=True)
        buf.copy_(snap, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return buf, event

    def _arrived(self) -> bool:
        buf, mark = self.pending
        if self.cuda:
            return mark.query()
        self.pending = (buf, mark - 1)
        return mark - 1 <= 0

    def _take(self) -> np.ndarray:
        buf = self.pending[0]
        self.pending = None
        return buf if isinstance(buf, np.ndarray) else buf.numpy()


# -- snapshots: a model part way through training, out of the batch and back in ------------------------------------
def resume_rows(new: list, params: MLPStack, opt_state: list[torch.Tensor]) -> None:
    """Put the weights and optimizer state of the specs among `new` (TrainSpecs, rows of params and opt_state) that
    resume from a snapshot in place of their initial ones; a ValueError if a snapshot does not fit."""
    for r, s in enumerate(new):
        snap = s.resume
        if snap is None:
            continue
        if shapes_of(snap.params) != shapes_of(params) or snap.params.n_models != 1 \
                or len(snap.opt_state) != len(opt_state):
            raise ValueError(f"a snapshot of a {_what(snap.params)} with {len(snap.opt_state)} optimizer buffers "
                             f"cannot resume a {_what(params)} with {len(opt_state)}")
        for dst, src in zip([*params.tensors(), *opt_state], [*snap.params.tensors(), *snap.opt_state]):
            dst[r] = src[0].to(dst.device, dst.dtype)


def _what(p) -> str:
    """A stack's architecture in a few words: an MLP's widths, another family's tensor shapes."""
    if isinstance(p, MLPStack):
        return "-".join(map(str, p.widths)) + " net"
    return f"model of tensors {shapes_of(p)}"


def take_snapshots(act: ActiveModels, rows: np.ndarray, every: float) -> list[tuple[int, Snapshot]]:
    """(spec index, Snapshot) of the models among `rows` (whose epoch just ended) that are still training and whose
    last snapshot is `every` seconds old: weights and optimizer state copied to the CPU (on a GPU this reads the
    models' statuses back, once per period)."""
    now = time.perf_counter()
    rows = rows[~act.outcome.reported[rows] & (now - act.outcome.saved[rows] >= every)]
    if not len(rows):
        return []
    running = act.outcome.status[upload(rows, torch.long, act.outcome.status.device)].cpu().numpy() == RUNNING
    rows = rows[running]
    act.outcome.saved[rows] = now
    return [(act.ids[r], Snapshot(int(act.counters.epoch[r]), int(act.counters.steps[r]),
                                  act.params.rows(r, r + 1).to("cpu", copy=True),
                                  [o[r:r + 1].to("cpu", copy=True) for o in act.opt_state],
                                  now - float(act.outcome.start[r]))) for r in rows]
