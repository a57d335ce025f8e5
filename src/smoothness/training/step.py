"""One training step of the M models of a batched program, and the end of an epoch: the state transitions of the
paper's minibatch SGD (sec. 4.1) on L + lambda * S (eq. 15), in the order a reader follows them.

    step(...)        for every active model at once:
      1. its minibatch: the next B positions of its epoch's shuffle -> rows of the input pool and its targets (a mask
         marks the points of a last, partial batch);
      2. the gradient of its objective on that batch and the update (the family's engine, engines.py), with a rate of
         0 for a finished (frozen) model;
      3. its epoch's running loss (and, for cross-entropy, its misclassified points) += the batch's, from before the
         update, as Keras logs them.
    epoch_end(...)   for the models whose epoch just ended: the stopping rule (loss below the threshold -> converged,
                     not finite -> diverged, the epoch cap -> not converged; models/losses.py for cross-entropy's),
                     then the next epoch's shuffle.

No value is read back to the host in either (tests/training/test_host_sync.py): the host knows every model's position
from the training sizes alone, and reads the statuses later (state.StatusPoll).
"""
from __future__ import annotations

import numpy as np
import torch

from smoothness.runtime import rng
from smoothness.training.state import NO_EPOCH, ActiveModels, Status, StepSettings, upload

AHEAD_ELEMS = 1 << 21  # int64 entries of look-ahead shuffles kept on a CPU (16 MB); 64x that on CUDA


def block_size(n_active: int, device: torch.device, batch_size: int, input_dim: int, fixed: int | None = None) -> int:
    """Models per block of a step: all of them on a GPU; on the CPU about 4 MB of minibatch inputs per block, so that
    the step's temporaries stay in cache and are not re-allocated from the OS at every step (which made large M
    slower than the one-model loop)."""
    if fixed:
        return fixed
    if device.type != "cpu":
        return max(1, n_active)
    return max(1, (1 << 20) // (batch_size * input_dim))


def step(act: ActiveModels, st: StepSettings, engine, pool: torch.Tensor, arange: torch.Tensor, block: int) -> None:
    """One optimizer step of every active model on its next minibatch (module docstring), in place."""
    B = arange.shape[0]
    nmax = act.data.perm.shape[1]
    # full: no model is at its last, partial batch; the regularized step always masks.
    full = st.regularizer == "none" and bool(np.all(act.counters.pos + B <= act.data.n_host))
    cols = act.counters.pos_d[:, None] + arange   # no host-to-device copy: the step never waits for the host
    valid = None
    if full:
        j = act.data.perm.gather(1, cols)
    else:
        valid = cols < act.data.n[:, None]
        j = act.data.perm.gather(1, cols.clamp(max=nmax - 1))
    rows = act.data.idx.gather(1, j)
    yb = act.data.y.gather(1, j)
    for a in range(0, len(act), block):
        b = min(a + block, len(act))
        xb = pool.index_select(0, rows[a:b].reshape(-1)).view(b - a, B, -1)   # [b - a, B, d]
        per, wrong = engine.update_(act.params.rows(a, b), [o[a:b] for o in act.opt_state], xb, yb[a:b],
                                    None if valid is None else valid[a:b], act.rates(a, b), act.hyper.lam[a:b],
                                    act.hyper.rho[a:b], act.counters.steps_d[a:b] + 1)
        act.counters.loss_sum[a:b] += per.sum(1)
        if wrong is not None:
            act.counters.wrong[a:b] += wrong.sum(1)
    act.counters.pos_d += B
    act.counters.steps_d += 1
    act.counters.pos += B
    act.counters.steps += 1


def epoch_end(act: ActiveModels, rows: np.ndarray, st: StepSettings, device: torch.device) -> None:
    """End the epoch of the models `rows` (known on the host from the mirrored counters), with no value read back:
    the stopping rule runs on the device, and a model that finishes is frozen in place (learning rate 0) with its
    outcome in act.outcome.status / final_* until the host reads it (StatusPoll)."""
    c, o = act.counters, act.outcome
    e = c.pos_d >= act.data.n   # the same rows, as a device mask
    loss = c.loss_sum / act.data.n   # eq. 2 over the epoch: the mean loss of the epoch's steps
    fits = loss.double() < act.hyper.threshold
    if st.loss == "cross_entropy":   # and every training point of the epoch classified correctly (losses.py)
        fits &= c.wrong == 0
    c.epoch_d += e
    c.pos_d.masked_fill_(e, 0)
    c.loss_sum.masked_fill_(e, 0.0)
    c.wrong.masked_fill_(e, 0)
    o.last_loss.copy_(torch.where(e, loss, o.last_loss))
    capped = torch.where(c.epoch_d >= act.hyper.max_epochs, Status.NOT_CONVERGED, Status.RUNNING)
    code = torch.where(~torch.isfinite(loss), Status.DIVERGED,   # non-finite weights give a non-finite loss
                       torch.where(fits, Status.CONVERGED, capped))
    new = e & (o.status == Status.RUNNING) & (code != Status.RUNNING)
    o.status.copy_(torch.where(new, code, o.status))
    o.final_loss.copy_(torch.where(new, loss, o.final_loss))
    o.final_epoch.copy_(torch.where(new, c.epoch_d, o.final_epoch))
    o.final_steps.copy_(torch.where(new, c.steps_d, o.final_steps))
    o.frozen |= new   # frozen: every later update is multiplied by a rate of 0
    c.epoch[rows] += 1
    c.pos[rows] = 0
    reshuffle(act, rows[~o.reported[rows]], e, device)


def reshuffle(act: ActiveModels, rows: np.ndarray, e: torch.Tensor, device: torch.device) -> None:
    """Set perm of the rows in mask e to the shuffle of their current epoch, taken from the look-ahead, which is
    refilled (for `rows` due for it, on the host's counters) k epochs at a time."""
    d = act.data
    nmax = d.perm.shape[1]
    if d.ahead is None:
        budget = AHEAD_ELEMS * (64 if device.type == "cuda" else 1)
        k = max(1, min(32, budget // (len(act) * nmax)))
        d.ahead = torch.empty(len(act), k, nmax, dtype=torch.long, device=device)
        d.ahead_base = np.full(len(act), NO_EPOCH, np.int64)
        d.ahead_base_d = torch.full((len(act),), NO_EPOCH, dtype=torch.long, device=device)
    k = d.ahead.shape[1]
    off = act.counters.epoch[rows] - d.ahead_base[rows]
    r = rows[(off < 0) | (off >= k)]
    if len(r):
        # only as wide as the widest refilled model: a row's keys past its n sort in index order, so the columns
        # from w on hold w.. in any case
        w = int(d.n_host[r].max())
        rt = upload(r, torch.long, device)
        base = upload(act.counters.epoch[r], torch.long, device)
        eps = base[:, None] + torch.arange(k, device=device)
        d.ahead[rt, :, :w] = rng.permutation_keys(d.n[rt][:, None].expand(-1, k), w, act.hyper.seed[rt][:, None, None],
                                                  rng.STREAM_SHUFFLE, eps[..., None])
        if w < nmax:
            d.ahead[rt, :, w:] = torch.arange(w, nmax, device=device)
        d.ahead_base[r] = act.counters.epoch[r]
        d.ahead_base_d[rt] = base
    off_d = (act.counters.epoch_d - d.ahead_base_d).clamp_(0, k - 1)
    this_epoch = d.ahead[torch.arange(len(act), device=device), off_d]
    d.perm.copy_(torch.where(e[:, None], this_epoch, d.perm))
