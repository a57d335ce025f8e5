"""Minibatch SGD for M independent models of one family as one batched tensor program (paper sec. 4.1): the loop
around step.py's step and epoch end (admitting models, reading their statuses, handing out the finished).

Every model has its own training set (rows of a shared input pool plus its own targets), seed,
learning rate, initialization scale, loss threshold and epoch cap; all share the family (architecture), loss and
batch size. At each step every active model takes one step on its next minibatch (step.py; for the paper's MLPs
batched matmuls over the stacked weights, for other families autograd through their batched forward, engines.py).
Each model reshuffles its own data every epoch and ends its epoch after ceil(N / batch) steps; the last, partial
batch is kept (as Keras does).

Stopping rule, as in the original code (a Keras callback on the epoch's `mse` log): at the end of
every epoch the mean of the per-example losses seen during that epoch is compared with
the threshold (cross-entropy also asks that no point of the epoch was misclassified, models/losses.py). A model then
ends as
  converged      epoch loss < threshold;
  diverged       epoch loss (or a weight) is NaN/inf;
  not_converged  the epoch cap was reached first.
The rule runs on the device: a model that finishes is frozen in place (a rate of 0 in every later step, its
outcome kept on the device) and leaves the batch when the host reads the statuses: on a CPU at the epoch end
itself, on CUDA through a non-blocking copy polled every `poll_every` steps (state.StatusPoll), the batch compacted
in buckets. Waiting models take the places of finished ones (`max_batch`). No step and no epoch end reads a value
back or copies from pageable host memory, so on a GPU the host queues steps without waiting for them
(tests/training/test_host_sync.py).
Randomness (initial weights, shuffles) comes from the counter-based generator in rng.py, so a
model follows the same trajectory alone, inside any batch, and in any admission order.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from smoothness.models import DEFAULT_WIDTHS, Family, MLPStack, family_of, losses
from smoothness.runtime import interrupt, precision, rng
from smoothness.training import engines, optimizers, step
from smoothness.training.spec import DEFAULT_BATCH, TrainResult, TrainSpec
from smoothness.training.state import (
    STATUSES,
    ActiveModels,
    Counters,
    Hyper,
    Outcome,
    Status,
    StatusPoll,
    StepSettings,
    TrainingData,
    resume_rows,
    take_snapshots,
    upload,
)

CONVERGED, NOT_CONVERGED, DIVERGED = STATUSES[1:]   # "converged", "not_converged", "diverged"


@dataclass
class _Run:
    """One call of iter_train: its specs and step settings, the models waiting for a place, the active batch, the
    status reading, and how many models are done."""
    specs: list[TrainSpec]
    st: StepSettings
    waiting: list[int]
    cap: int
    poll: StatusPoll
    act: ActiveModels | None = None
    done: int = 0


def as_family(family_or_widths) -> Family:
    """A Family, or the MLP family of layer widths (d, *hidden, K)."""
    if isinstance(family_or_widths, Family):
        return family_or_widths
    w = tuple(family_or_widths)
    return family_of(MLPStack([torch.empty(1, b, a) for a, b in zip(w[:-1], w[1:])], []))


class BatchedTrainer:
    """Trains many models to interpolation; see the module docstring for the rules. `family`: a models.Family, or
    the layer widths of an MLP (the paper's 784-256-1 by default)."""

    def __init__(self, pool_x: torch.Tensor, family=DEFAULT_WIDTHS, batch_size: int = DEFAULT_BATCH,
                 device=None, max_batch: int | None = None, block_models: int | None = None,
                 matmul_precision: str = "fp32", poll_every: int = 16, snapshot_every: float | None = None, *,
                 widths=None):
        self.device = torch.device(device or "cpu")
        self.precision = precision.check(matmul_precision)  # of the steps' matmuls (precision.py)
        self.family = as_family(widths if widths is not None else family)
        self.x = torch.as_tensor(pool_x, dtype=torch.float32).to(self.device)
        d = self.family.input_dim
        if self.x.dim() >= 2 and self.x.dim() != 2 and self.x[0].numel() == d:
            self.x = self.x.reshape(self.x.shape[0], d)   # images [P, C, H, W] are held flat
        if self.x.dim() != 2 or self.x.shape[1] != d:
            raise ValueError(f"pool must be [P, {d}], got {tuple(self.x.shape)}")
        self.widths = getattr(self.family, "widths", None)
        self.batch_size = int(batch_size)
        self.max_batch = max_batch
        self.block_models = block_models  # models per block of a step (default: step.block_size)
        self._arange = torch.arange(self.batch_size, device=self.device)
        self.poll_every = poll_every   # steps between status reads on CUDA (state.StatusPoll)
        self.poll_lag = None           # tests: a CPU polls like CUDA, each reading `poll_lag` polls late
        # seconds between two snapshots of a model still training (handed to iter_train's on_snapshot at the end
        # of an epoch; on a GPU each reads the model's status back); None or 0: none
        self.snapshot_every = snapshot_every if snapshot_every and snapshot_every > 0 else None

    # -- admission ---------------------------------------------------------------------------
    def _admit(self, act: ActiveModels | None, specs: list[TrainSpec], ids: list[int],
               optimizer: str) -> ActiveModels:
        """The state with the models `ids` (initialized from their seeds) admitted after the rows of act."""
        dev = self.device
        new = [specs[i] for i in ids]
        nmax = max([s.indices.numel() for s in new] + ([act.data.idx.shape[1]] if act else []))

        def pad(rows, value, dtype):
            out = torch.full((len(rows), nmax), value, dtype=dtype)
            for r, t in enumerate(rows):
                out[r, : t.numel()] = t
            return upload(out, dtype, dev)

        seeds = upload([s.seed for s in new], torch.int64, dev)
        params = self.family.init(seeds, upload([s.alpha for s in new], torch.float64, dev), device=dev)
        opt_state = optimizers.init_state(params.tensors(), optimizer)
        resume_rows(new, params, opt_state)
        n_host = np.array([s.indices.numel() for s in new], np.int64)
        n = upload(n_host, torch.int64, dev)
        epochs = np.array([s.resume.epoch if s.resume else 0 for s in new], np.int64)
        steps = np.array([s.resume.steps if s.resume else 0 for s in new], np.int64)
        start = time.perf_counter() - np.array([s.resume.seconds if s.resume else 0.0 for s in new])

        def per_model(values, dtype):
            return upload(values, dtype, dev)
        epoch_d = per_model(epochs, torch.int64)

        def fill(value, dtype):
            return torch.full((len(new),), value, dtype=dtype, device=dev)

        added = ActiveModels(
            ids=list(ids), params=params, opt_state=opt_state,
            hyper=Hyper(lr=per_model([s.lr for s in new], torch.float32),
                        lam=per_model([s.lam for s in new], torch.float32),
                        rho=per_model([s.rho for s in new], torch.float32),
                        threshold=per_model([s.threshold for s in new], torch.float64),
                        max_epochs=per_model([s.max_epochs for s in new], torch.int64), seed=seeds),
            data=TrainingData(idx=pad([s.indices for s in new], 0, torch.long),
                              y=pad([s.targets for s in new], 0.0, torch.float32),
                              perm=rng.permutation_keys(n, nmax, seeds[:, None], rng.STREAM_SHUFFLE, epoch_d[:, None]),
                              n=n,
                              n_host=n_host),
            counters=Counters(pos_d=fill(0, torch.int64), epoch_d=epoch_d,
                              steps_d=per_model(steps, torch.int64), loss_sum=fill(0.0, torch.float32),
                              wrong=fill(0, torch.int64),
                              pos=np.zeros(len(new), np.int64), epoch=epochs, steps=steps),
            outcome=Outcome(status=fill(Status.RUNNING, torch.int64), frozen=fill(False, torch.bool),
                            final_loss=fill(float("nan"), torch.float32), final_epoch=fill(0, torch.int64),
                            final_steps=fill(0, torch.int64), last_loss=fill(float("nan"), torch.float32),
                            start=start, saved=np.full(len(new), time.perf_counter()),
                            reported=np.zeros(len(new), bool)))
        if not act:
            return added
        act.join(added)
        return act

    # -- a step and the end of an epoch (step.py) ---------------------------------------------------------------
    def _step(self, act: ActiveModels, st: StepSettings) -> None:
        step.step(act, st, self._engine, self.x, self._arange,
                      step.block_size(len(act), self.device, self.batch_size, self.x.shape[1], self.block_models))

    def _epoch_end(self, act: ActiveModels, rows: np.ndarray) -> None:
        step.epoch_end(act, rows, self._settings, self.device)

    # -- the loop ------------------------------------------------------------------------------
    def train(self, specs: list[TrainSpec], on_finish=None, progress=None) -> list[TrainResult]:
        """Train every spec; on_finish(result) is called the moment each model finishes.

        progress, if given, is called as progress(info) at each reading of the statuses (on a CPU after
        every step that ends some epoch; on CUDA about every poll_every steps), with a dict of: done,
        total, active, epoch (largest epoch among active models), loss (smallest last epoch loss among
        them).
        """
        results: list[TrainResult | None] = [None] * len(specs)
        for res in self.iter_train(specs, progress):
            results[res.index] = res
            if on_finish is not None:
                on_finish(res)
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def iter_train(self, specs: list[TrainSpec], progress=None, on_snapshot=None):
        """Train every spec, yielding each TrainResult the moment its model finishes (see train). The loop: admit
        waiting models into free places, step every active model (and end their epochs), read the statuses.
        on_snapshot(index, Snapshot), if given (with snapshot_every set), is called with each model still
        training at the first end of an epoch snapshot_every seconds after its last snapshot: a TrainSpec with
        resume=that snapshot goes on exactly from there."""
        run = self._start(specs)
        # The matmul precision is set for a run of steps and undone at each yield, where the caller measures
        # (in strict float32) and may change the flags itself; not per step (about 20 us a step, measured here).
        with contextlib.ExitStack() as flags:
            flags_set = False
            while run.waiting or run.act:
                if not flags_set:
                    flags.enter_context(precision.matmuls(self.precision, self.device))
                    flags_set = True
                self._admit_waiting(run)
                ended = self._advance(run)
                if len(ended) and on_snapshot is not None and self.snapshot_every is not None:
                    for index, snap in take_snapshots(run.act, ended, self.snapshot_every):
                        on_snapshot(index, snap)
                finished, info = self._read(run, bool(len(ended)), progress)
                if finished:
                    flags.close()
                    flags_set = False
                    yield from finished
                if info is not None:
                    progress(info)

    def _start(self, specs: list[TrainSpec]) -> "_Run":
        """The run of these specs: checked (indices in the pool; one regularizer, optimizer and number of penalty
        points per batched program), every model waiting."""
        for s in specs:
            if s.indices.numel() and (int(s.indices.max()) >= self.x.shape[0] or int(s.indices.min()) < 0):
                raise ValueError("training indices out of range of the pool")
        one = {}   # the settings that one batched program shares (StepSettings' defaults where no spec is given)
        for field, what in (("regularizer", "kind of regularizer"), ("optimizer", "optimizer"),
                            ("penalty_points", "number of penalty points per segment"), ("loss", "loss")):
            values = {getattr(s, field) for s in specs}
            if len(values) > 1:
                raise ValueError(f"one batched program has one {what}, got {sorted(values)}")
            one.update({field: values.pop()} if values else {})
        st = StepSettings(**one)
        losses.check_outputs(st.loss, self.family.outputs)
        self._settings = st
        self._engine = engines.engine_for(st, self.family, self.batch_size)
        self.admit_seconds = 0.0  # time spent initializing and admitting models (reported by bench)
        return _Run(specs, st, list(range(len(specs))), self.max_batch or len(specs),
                    StatusPoll(self.device, self.poll_every, self.poll_lag))

    def _admit_waiting(self, run: "_Run") -> None:
        """Admit waiting models into the free places of the batch (initialized from their seeds)."""
        room = run.cap - (len(run.act) if run.act else 0)
        if run.waiting and room > 0:
            take, run.waiting = run.waiting[:room], run.waiting[room:]
            t0 = time.perf_counter()
            run.act = self._admit(run.act, run.specs, take, run.st.optimizer)
            self.admit_seconds += time.perf_counter() - t0

    def _advance(self, run: "_Run") -> np.ndarray:
        """One step of every active model, then the epoch ends it brought; the rows whose epoch ended."""
        act = run.act
        self._step(act, run.st)
        ended = np.flatnonzero(act.counters.pos >= act.data.n_host)
        if len(ended):
            interrupt.check()   # a Ctrl-C whose exception was swallowed (interrupt.check says where)
            self._epoch_end(act, ended)
        return ended

    def _read(self, run: "_Run", ended: bool, progress) -> tuple[list[TrainResult], dict | None]:
        """Read the statuses when a reading is due (StatusPoll): the models that finished, handed out once, and
        the progress info (if a progress callback is given); the batch is compacted when that pays."""
        act, poll = run.act, run.poll
        snap = poll.poll(act, ended)
        if snap is None:
            return [], None
        finished = self._finished(act, snap)
        live = ~act.outcome.reported
        info = None if progress is None else self._progress(act, snap, live, run.done + len(finished),
                                                            len(run.specs))
        if not live.all() and (not poll.deferred or run.waiting or 2 * int(live.sum()) <= len(act)):
            act.keep(np.flatnonzero(live))   # on a GPU in buckets: each compaction copies the batch
        if not len(act):
            run.act = None
        run.done += len(finished)
        return finished, info

    @staticmethod
    def _progress(act: ActiveModels, snap: np.ndarray, live: np.ndarray, done: int, total: int) -> dict:
        """The progress callback's info (see train), from a status snapshot taken before compaction."""
        last = snap[4][live]
        last = last[np.isfinite(last)]
        return dict(done=done, total=total, active=int(live.sum()),
                    epoch=int(act.counters.epoch[live].max()) if live.any() else 0,
                    loss=float(last.min()) if len(last) else float("nan"))

    def _finished(self, act: ActiveModels, snap: np.ndarray) -> list[TrainResult]:
        """The models whose finish the snapshot shows for the first time, as TrainResults (marked reported)."""
        rows = np.flatnonzero((snap[0] != Status.RUNNING) & ~act.outcome.reported)
        act.outcome.reported[rows] = True
        now = time.perf_counter()
        return [TrainResult(act.ids[r], Status(int(snap[0, r])).label, int(snap[2, r]), int(snap[3, r]),
                            float(snap[1, r]), act.params.rows(r, r + 1).clone(),
                            now - float(act.outcome.start[r])) for r in rows]


def train_models(pool_x, specs: list[TrainSpec], *, widths=DEFAULT_WIDTHS, batch_size: int = DEFAULT_BATCH,
                 device=None, max_batch: int | None = None, on_finish=None, progress=None,
                 matmul_precision: str = "fp32") -> list[TrainResult]:
    """Train len(specs) models on rows of pool_x as one batched program; results in spec order."""
    return BatchedTrainer(pool_x, widths, batch_size, device, max_batch,
                          matmul_precision=matmul_precision).train(specs, on_finish, progress)
