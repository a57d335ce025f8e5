"""Follow one model of a grid through its training: train it from its first epoch exactly as the grid does (its
data, seed, learning rate, penalty and stopping rule; nothing is stored) and every --every epochs print its training
MSE over the whole training set (the data term, eq. 2), the epoch's running MSE that the stopping rule reads, and
the sharpness of the training loss (the top eigenvalue of its Hessian in the parameters, by power iteration)
against plain gradient descent's stability limit 2 / lr. A model whose sharpness climbs to 2 / lr and stays there
while its loss stops falling is at the edge of stability (Cohen et al., 2021).

    .venv/bin/python scripts/sharpness_trajectory.py fashion-table2-10k KEY --every 100
    .venv/bin/python scripts/sharpness_trajectory.py GRID KEY --every 50 --max-epochs 3000   # stop it earlier

KEY is the model's key (`smoothness report` and the store list them; `scripts/snapshot_state.py` prints them).
"""
from __future__ import annotations

import argparse
import time

import torch

from smoothness import models, training
from smoothness.experiments.configuration import grid as grids
from smoothness.experiments.configuration.config import config_key
from smoothness.experiments.running.pipeline import load_tasks, train_spec
from smoothness.measures.paramspace import stack_sharpness


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grid", help="the grid's preset name or YAML file")
    ap.add_argument("key", help="the model's key")
    ap.add_argument("--every", type=int, default=100, help="epochs between two readings (default 100)")
    ap.add_argument("--max-epochs", type=int, help="stop here instead of at the grid's epoch cap")
    ap.add_argument("--data-dir", default=None)
    a = ap.parse_args()
    if a.every < 1:
        ap.error("--every must be at least 1")
    configs = {config_key(c): c for c in grids.resolve(a.grid).configs()}
    if a.key not in configs:
        raise SystemExit(f"{a.key} is not a model of grid {a.grid}")
    c = configs[a.key]
    task = load_tasks([c], a.data_dir)[(c.data, c.pair)]
    sub = task.subset(c.n_train, c.seed)
    x, y = task.pool_x[sub], task.pool_y[sub].to(torch.float32)
    cap = min(c.max_epochs, a.max_epochs) if a.max_epochs else c.max_epochs
    spec = train_spec(c, sub, task.pool_y[sub], max_epochs=cap)
    trainer = training.BatchedTrainer(task.pool_x, tuple(c.widths), c.batch_size, "cpu", snapshot_every=1e-9)
    print(f"{a.key}: {c.data} {c.pair[0]}/{c.pair[1]}, N = {c.n_train}, {c.regularizer} lam {c.lam:g}, lr {c.lr:g}, "
          f"cap {cap:,} epochs; 2/lr = {2 / c.lr:g}", flush=True)
    print(f"{'epoch':>7} {'train MSE':>10} {'epoch MSE':>10} {'sharpness':>9} {'seconds':>8}", flush=True)
    t0 = time.perf_counter()
    # the trainer hands over the model at the end of every epoch (snapshot_every is tiny) and then reports the
    # epoch's running MSE to progress(); every --every-th epoch is read
    due = []

    def on_snapshot(_, snap):
        if snap.epoch % a.every == 0:
            due.append(snap)

    def progress(info):
        while due:
            snap = due.pop()
            top = float(stack_sharpness(snap.params, x[None], y[None]).value[0])
            loss = float(models.dataset_mse(snap.params, x, y)[0])
            print(f"{snap.epoch:>7,} {loss:>10.3e} {info['loss']:>10.3e} {top:>9.3f} {time.perf_counter() - t0:>8.0f}",
                  flush=True)

    for res in trainer.iter_train([spec], progress=progress, on_snapshot=on_snapshot):
        print(f"{res.status} after {res.epochs:,} epochs (epoch MSE {res.loss_epoch:.3e}); final sharpness "
              f"{float(stack_sharpness(res.params, x[None], y[None]).value[0]):.3f}, training MSE "
              f"{float(models.dataset_mse(res.params, x, y)[0]):.3e}", flush=True)


if __name__ == "__main__":
    main()
