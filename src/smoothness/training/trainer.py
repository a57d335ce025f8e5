"""Minibatch SGD on MSE for M independent ReLU MLPs as one batched tensor program (paper sec. 4.1).

Every model has its own training set (rows of a shared input pool plus its own targets), seed,
learning rate, initialization scale, loss threshold and epoch cap; all share the architecture and
batch size. At each step every active model takes one SGD step on its next minibatch (batched
matmuls over the stacked weights). Each model reshuffles its own data every epoch and ends its
epoch after ceil(N / batch) steps; the last, partial batch is kept (as Keras does).

Stopping rule, as in the original code (a Keras callback on the epoch's `mse` log): at the end of
every epoch the mean of the per-example squared errors seen during that epoch is compared with
the threshold. A model then ends as
  converged      epoch loss < threshold;
  diverged       epoch loss (or a weight) is NaN/inf;
  not_converged  the epoch cap was reached first.
The rule runs on the device: a model that finishes is frozen in place (a rate of 0 in every later step, its
outcome kept on the device) and leaves the batch when the host reads the statuses: on a CPU at the epoch end
itself, on CUDA through a non-blocking copy polled every `poll_every` steps (state.StatusPoll), the batch compacted
in buckets. Waiting models take the places of finished ones (`max_batch`). No step and no epoch end reads a value
back or copies from pageable host memory, so on a GPU the host queues steps without waiting for them
(tests/test_host_sync.py).
Randomness (initial weights, shuffles) comes from the counter-based generator in rng.py, so a
model follows the same trajectory alone, inside any batch, and in any admission order.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from smoothness.models import (
    DEFAULT_WIDTHS,
    MLPStack,
    forward,
    init_mlp,
    mse_scale,
    parameter_grads,
    residuals,
    sgd_update_,
)
from smoothness.runtime import interrupt, precision, rng
from smoothness.training import optimizers, regularizers
from smoothness.training.spec import DEFAULT_BATCH, TrainResult, TrainSpec
from smoothness.training.state import CONVERGED as CONVERGED_CODE
from smoothness.training.state import DIVERGED as DIVERGED_CODE
from smoothness.training.state import NOT_CONVERGED as NOT_CONVERGED_CODE
from smoothness.training.state import (
    RUNNING,
    STATUSES,
    ActiveModels,
    Counters,
    Hyper,
    Outcome,
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


class BatchedTrainer:
    """Trains many models to interpolation; see the module docstring for the rules."""

    def __init__(self, pool_x: torch.Tensor, widths=DEFAULT_WIDTHS, batch_size: int = DEFAULT_BATCH,
                 device=None, max_batch: int | None = None, block_models: int | None = None,
                 matmul_precision: str = "fp32", poll_every: int = 16, snapshot_every: float | None = None):
        self.device = torch.device(device or "cpu")
        self.precision = precision.check(matmul_precision)  # of the steps' matmuls (precision.py)
        self.x = torch.as_tensor(pool_x, dtype=torch.float32).to(self.device)
        if self.x.dim() != 2 or self.x.shape[1] != widths[0]:
            raise ValueError(f"pool must be [P, {widths[0]}], got {tuple(self.x.shape)}")
        self.widths = tuple(widths)
        self.batch_size = int(batch_size)
        self.max_batch = max_batch
        self.block_models = block_models  # models per block of a step (default: see _block_size)
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
        params = init_mlp(seeds, self.widths, upload([s.alpha for s in new], torch.float64, dev), device=dev)
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
                              pos=np.zeros(len(new), np.int64), epoch=epochs, steps=steps),
            outcome=Outcome(status=fill(RUNNING, torch.int64), frozen=fill(False, torch.bool),
                            final_loss=fill(float("nan"), torch.float32), final_epoch=fill(0, torch.int64),
                            final_steps=fill(0, torch.int64), last_loss=fill(float("nan"), torch.float32),
                            start=start, saved=np.full(len(new), time.perf_counter()),
                            reported=np.zeros(len(new), bool)))
        if not act:
            return added
        act.join(added)
        return act

    # -- one SGD step for every active model ---------------------------------------------------
    def _step(self, act: ActiveModels, st: StepSettings) -> None:
        B = self.batch_size
        nmax = act.data.perm.shape[1]
        # full: no model is at its last, partial batch; the regularized step always masks.
        full = st.regularizer == "none" and bool(np.all(act.counters.pos + B <= act.data.n_host))
        cols = act.counters.pos_d[:, None] + self._arange   # no host-to-device copy: the step never waits for the host
        valid = None
        if full:
            j = act.data.perm.gather(1, cols)
        else:
            valid = cols < act.data.n[:, None]
            j = act.data.perm.gather(1, cols.clamp(max=nmax - 1))
        rows = act.data.idx.gather(1, j)
        yb = act.data.y.gather(1, j)
        blk = self._block_size(len(act))
        for a in range(0, len(act), blk):
            b = min(a + blk, len(act))
            self._step_block(act, st, a, b, rows[a:b], yb[a:b], None if valid is None else valid[a:b])
        act.counters.pos_d += B
        act.counters.steps_d += 1
        act.counters.pos += B
        act.counters.steps += 1

    def _block_size(self, n_active: int) -> int:
        """Models per block of the step: all of them on a GPU; on the CPU about 4 MB of minibatch
        inputs per block, so that the step's temporaries stay in cache and are not re-allocated
        from the OS at every step (which made large M slower than the one-model loop)."""
        if self.block_models:
            return self.block_models
        if self.device.type != "cpu":
            return max(1, n_active)
        return max(1, (1 << 20) // (self.batch_size * self.widths[0]))

    def _step_block(self, act: ActiveModels, st: StepSettings, a: int, b: int, rows, yb, valid) -> None:
        """One optimizer step for the active models a..b-1 (weights and state updated in place through views)."""
        p = act.params.rows(a, b)
        xb = self.x.index_select(0, rows.reshape(-1)).view(*rows.shape, -1)  # [b - a, B, d]
        lr = act.rates(a, b)   # 0 for a frozen (finished) model
        grads = None
        if st.optimizer == "sgd" and (st.regularizer == "none" or self._fused_penalty(p, st)):
            # fused: the update is folded into the gradient GEMMs
            out, acts, pres = forward(p, xb, cache=True)
            err = residuals(out, yb, valid)
            scale = mse_scale(valid, self.batch_size, lr, err.dtype)   # dL/dout of eq. 2 on the batch, times lr
            pen = None
            if st.regularizer != "none":   # eq. 15: lam * S's gradient, from the weights before the update
                pen = regularizers.penalty_grads(p, st.regularizer, act.hyper.lam[a:b], pres[0], valid,
                                                 st.penalty_points)
            rate = lr[:, None, None]
            sgd_update_(p, acts, pres, err * scale[:, None],
                        dpre=[pen.dz * rate] if pen is not None and pen.dz is not None else None)
            if pen is not None:
                if pen.dW1 is not None:
                    p.weights[0].sub_(pen.dW1 * rate)
                p.weights[1].sub_(pen.dw2 * rate)
        else:
            grads, err = self._grads(p, st, act.hyper.lam[a:b], xb, yb, valid)
            if st.optimizer == "sam":   # the gradient again, at theta + e on the same minibatch
                moved = [u + e for u, e in zip(p.tensors(), optimizers.sam_perturbation(grads, act.hyper.rho[a:b]))]
                n_w = len(p.weights)
                grads, _ = self._grads(MLPStack(moved[:n_w], moved[n_w:]), st, act.hyper.lam[a:b], xb, yb, valid)
        if grads is not None:
            t = act.counters.steps_d[a:b] + 1
            optimizers.step_(p.tensors(), grads, [o[a:b] for o in act.opt_state], st.optimizer, lr, t)
        act.counters.loss_sum[a:b] += err.square().sum(1)  # errors from before the update, as Keras logs them

    @staticmethod
    def _fused_penalty(p: MLPStack, st: StepSettings) -> bool:
        """Whether the regularizer's gradient has the two-layer closed form that SGD can fold into its fused
        update (regularizers.penalty_grads)."""
        return p.depth == 1 and st.regularizer in regularizers.TWO_LAYER

    def _grads(self, p: MLPStack, st: StepSettings, lam, xb, yb, valid):
        """Every model's gradient of its minibatch objective (eq. 2, or eq. 15 with a regularizer), in p.tensors()
        order, and the batch errors [M, B]."""
        if st.regularizer != "none":
            return regularizers.regularized_grads(p, st.regularizer, lam, xb, yb, valid, st.penalty_points)
        out, acts, pres = forward(p, xb, cache=True)
        err = residuals(out, yb, valid)
        scale = mse_scale(valid, self.batch_size, dtype=err.dtype)
        return parameter_grads(p, acts, pres, err * (scale if valid is None else scale[:, None])), err

    # -- epoch ends: the stopping rule and the reshuffle, on the device ---------------------------
    def _epoch_end(self, act: ActiveModels, rows: np.ndarray) -> None:
        """End the epoch of the models `rows` (known on the host from the mirrored counters), with no value read
        back: the stopping rule runs on the device, and a model that finishes is frozen in place (learning rate
        0) with its outcome in act.outcome.status / final_* until the host reads it (StatusPoll)."""
        e = act.counters.pos_d >= act.data.n   # the same rows, as a device mask
        loss = act.counters.loss_sum / act.data.n   # eq. 2 over the epoch: the mean squared error of the epoch's steps
        act.counters.epoch_d += e
        act.counters.pos_d.masked_fill_(e, 0)
        act.counters.loss_sum.masked_fill_(e, 0.0)
        act.outcome.last_loss.copy_(torch.where(e, loss, act.outcome.last_loss))
        capped = torch.where(act.counters.epoch_d >= act.hyper.max_epochs, NOT_CONVERGED_CODE, RUNNING)
        code = torch.where(~torch.isfinite(loss), DIVERGED_CODE,   # non-finite weights give a non-finite loss
                           torch.where(loss.double() < act.hyper.threshold, CONVERGED_CODE, capped))
        new = e & (act.outcome.status == RUNNING) & (code != RUNNING)
        act.outcome.status.copy_(torch.where(new, code, act.outcome.status))
        act.outcome.final_loss.copy_(torch.where(new, loss, act.outcome.final_loss))
        act.outcome.final_epoch.copy_(torch.where(new, act.counters.epoch_d, act.outcome.final_epoch))
        act.outcome.final_steps.copy_(torch.where(new, act.counters.steps_d, act.outcome.final_steps))
        act.outcome.frozen |= new   # frozen: every later update is multiplied by a rate of 0
        act.counters.epoch[rows] += 1
        act.counters.pos[rows] = 0
        self._reshuffle(act, rows[~act.outcome.reported[rows]], e)

    _AHEAD_ELEMS = 1 << 21  # int64 entries of look-ahead shuffles kept on a CPU (16 MB); 64x that on CUDA

    def _reshuffle(self, act: ActiveModels, rows: np.ndarray, e: torch.Tensor) -> None:
        """Set perm of the rows in mask e to the shuffle of their current epoch, taken from the look-ahead, which
        is refilled (for `rows` due for it, on the host's counters) k epochs at a time."""
        nmax = act.data.perm.shape[1]
        if act.data.ahead is None:
            budget = self._AHEAD_ELEMS * (64 if self.device.type == "cuda" else 1)
            k = max(1, min(32, budget // (len(act) * nmax)))
            act.data.ahead = torch.empty(len(act), k, nmax, dtype=torch.long, device=self.device)
            act.data.ahead_base = np.full(len(act), -(1 << 40), np.int64)
            act.data.ahead_base_d = torch.full((len(act),), -(1 << 40), dtype=torch.long, device=self.device)
        k = act.data.ahead.shape[1]
        off = act.counters.epoch[rows] - act.data.ahead_base[rows]
        r = rows[(off < 0) | (off >= k)]
        if len(r):
            # only as wide as the widest refilled model: a row's keys past its n sort in index order, so the
            # columns from w on hold w.. in any case
            w = int(act.data.n_host[r].max())
            rt = upload(r, torch.long, self.device)
            base = upload(act.counters.epoch[r], torch.long, self.device)
            eps = base[:, None] + torch.arange(k, device=self.device)
            act.data.ahead[rt, :, :w] = rng.permutation_keys(act.data.n[rt][:, None].expand(-1, k), w,
                                                        act.hyper.seed[rt][:, None, None], rng.STREAM_SHUFFLE,
                                                        eps[..., None])
            if w < nmax:
                act.data.ahead[rt, :, w:] = torch.arange(w, nmax, device=self.device)
            act.data.ahead_base[r] = act.counters.epoch[r]
            act.data.ahead_base_d[rt] = base
        off_d = (act.counters.epoch_d - act.data.ahead_base_d).clamp_(0, k - 1)
        this_epoch = act.data.ahead[torch.arange(len(act), device=self.device), off_d]
        act.data.perm.copy_(torch.where(e[:, None], this_epoch, act.data.perm))

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
        kinds = {s.regularizer for s in specs}
        if len(kinds) > 1:
            raise ValueError(f"one batched program trains one kind of regularizer, got {sorted(kinds)}")
        opts = {s.optimizer for s in specs}
        if len(opts) > 1:
            raise ValueError(f"one batched program trains with one optimizer, got {sorted(opts)}")
        points = {s.penalty_points for s in specs}
        if len(points) > 1:
            raise ValueError(f"one batched program has one number of penalty points per segment, got {sorted(points)}")
        st = StepSettings(kinds.pop() if kinds else "none", opts.pop() if opts else "sgd",
                          points.pop() if points else regularizers.SEGMENT_POINTS)
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
        losses = snap[4][live]
        losses = losses[np.isfinite(losses)]
        return dict(done=done, total=total, active=int(live.sum()),
                    epoch=int(act.counters.epoch[live].max()) if live.any() else 0,
                    loss=float(losses.min()) if len(losses) else float("nan"))

    def _finished(self, act: ActiveModels, snap: np.ndarray) -> list[TrainResult]:
        """The models whose finish the snapshot shows for the first time, as TrainResults (marked reported)."""
        rows = np.flatnonzero((snap[0] != RUNNING) & ~act.outcome.reported)
        act.outcome.reported[rows] = True
        now = time.perf_counter()
        return [TrainResult(act.ids[r], STATUSES[int(snap[0, r])], int(snap[2, r]), int(snap[3, r]),
                            float(snap[1, r]), act.params.rows(r, r + 1).clone(),
                            now - float(act.outcome.start[r])) for r in rows]


def train_models(pool_x, specs: list[TrainSpec], *, widths=DEFAULT_WIDTHS, batch_size: int = DEFAULT_BATCH,
                 device=None, max_batch: int | None = None, on_finish=None, progress=None,
                 matmul_precision: str = "fp32") -> list[TrainResult]:
    """Train len(specs) models on rows of pool_x as one batched program; results in spec order."""
    return BatchedTrainer(pool_x, widths, batch_size, device, max_batch,
                          matmul_precision=matmul_precision).train(specs, on_finish, progress)


@torch.no_grad()
def mse(p: MLPStack, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Eq. 2: mean squared error of each model on (x [n, d] or [M, n, d], y [n] or [M, n]). [M]."""
    total = torch.zeros(p.n_models, dtype=torch.float64, device=x.device)
    n = x.shape[-2]
    for i in range(0, n, chunk):   # the sum in float64, in chunks of points
        total += residuals(forward(p, x[..., i:i + chunk, :]), y[..., i:i + chunk]).square().sum(-1).double()
    return (total / n).float()
