"""Where the models in training of a grid's run stand: for each snapshot in RUN_DIR/snapshots, its epoch, the
training loss over its whole training set (the data term, eq. 2 for the MSE, at the snapshot's weights), the sharpness
of that loss (the top eigenvalue of its Hessian in the parameters: curvature.sharpness, power iteration for an MLP,
Lanczos for other families) of any model family, against plain gradient descent's
stability limit 2 / lr, and on one epoch of minibatches (the first 20 unless --batches says otherwise) the size of
the mean gradient of the data term and of the penalty lam * S, and the cosine between the two.

    .venv/bin/python scripts/snapshot_state.py fashion-table2-10k runs/fashion-table2-10k
    .venv/bin/python scripts/snapshot_state.py GRID RUN_DIR --snapshot OLD.pt --key KEY   # a snapshot kept elsewhere

A model whose sharpness stays at 2 / lr while its training loss rises is at the edge of stability (Cohen et al.,
2021): its steps are too long for the valley it is in, so it oscillates across the valley instead of descending it.
A data gradient much larger than the penalty's says that the penalty does not hold the loss up directly.
"""
from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch

from smoothness.experiments.configuration import grid
from smoothness.experiments.configuration.config import config_key
from smoothness.experiments.running.evaluate import family_of_config
from smoothness.experiments.running.pipeline import load_tasks
from smoothness.measures import curvature
from smoothness.models import losses, stack_from_state
from smoothness.training.regularizers import regularized_grads


def gradients(p, fam, cfg, x, y, batches: int, seed: int = 0):
    """Mean over `batches` minibatches of one shuffle of the training set: the data term's gradient and lam * S's,
    each flattened over the parameters (a model of any family)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    B = cfg.batch_size
    valid = torch.ones(1, B, dtype=torch.bool)
    lam = torch.tensor([float(cfg.lam)])
    data = pen = 0.0
    n = min(batches, len(y) // B)
    for k in range(n):
        r = order[k * B:(k + 1) * B]
        xb, yb = x[r][None], y[r][None]
        q = p.as_leaves()
        with torch.enable_grad():
            plain = torch.autograd.grad(losses.mean_loss(fam.values(q, xb), yb, cfg.loss, valid)[0].sum(), q.tensors())
        d = torch.cat([t.reshape(-1) for t in plain])
        data = data + d / n
        if cfg.regularizer != "none":
            total, _ = regularized_grads(p, cfg.regularizer, lam, xb, yb, valid, cfg.penalty_points, fam=fam,
                                         loss=cfg.loss)
            pen = pen + (torch.cat([t.reshape(-1) for t in total]) - d) / n
    return data, pen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grid", help="the grid's preset name or YAML file")
    ap.add_argument("run_dir", help="the run's output folder (its snapshots are in RUN_DIR/snapshots)")
    ap.add_argument("--snapshot", type=Path, help="a snapshot file kept elsewhere (with --key)")
    ap.add_argument("--key", help="the model key of --snapshot")
    ap.add_argument("--batches", type=int, default=20, help="minibatches for the mean gradients (default 20)")
    ap.add_argument("--steps", type=int, default=30, help="steps of the sharpness (default 30)")
    ap.add_argument("--data-dir", default=None)
    a = ap.parse_args()
    if (a.snapshot is None) != (a.key is None):
        ap.error("--snapshot and --key go together")
    configs = {config_key(c): c for c in grid.resolve(a.grid).configs()}
    files = [(a.key, a.snapshot)] if a.snapshot else \
        sorted((f.stem, f) for f in (Path(a.run_dir) / "snapshots").glob("*.pt"))
    if not files:
        raise SystemExit(f"no snapshots in {Path(a.run_dir) / 'snapshots'}")
    tasks = load_tasks([configs[key] for key, _ in files if key in configs], a.data_dir)   # each pair loaded once
    print(f"{'key':24} {'pair':>5} {'N':>6} {'regularizer':>20} {'lam':>8} {'lr':>5} {'epoch':>7} {'train loss':>10} "
          f"{'sharpness':>9} {'2/lr':>6} {'|grad L|':>9} {'|grad lam S|':>12} {'cos':>6}")
    for key, path in files:
        cfg = configs.get(key)
        if cfg is None:
            print(f"{key:24} not a model of grid {a.grid}")
            continue
        state = torch.load(path, map_location="cpu", weights_only=True)
        p, fam = stack_from_state(state["params"]), family_of_config(cfg)
        task = tasks[cfg.task_id]
        sub = task.subset(cfg.n_train, cfg.seed)
        x, y = task.pool_x[sub], task.pool_y[sub].to(torch.float32)
        loss = float(losses.dataset_loss(partial(fam.values, p), x, y, cfg.loss)[0])
        top = float(curvature.sharpness(fam.module(p, 0), x, losses.measure_targets(y, cfg.outputs), cfg.loss,
                                        steps=a.steps))
        data, pen = gradients(p, fam, cfg, x, y, a.batches)
        pen_norm = float(pen.norm()) if torch.is_tensor(pen) else 0.0
        cos = float(data @ pen / (data.norm() * pen.norm())) if pen_norm > 0 else float("nan")
        print(f"{key:24} {cfg.pair[0]}/{cfg.pair[1]:<3} {cfg.n_train:>6} {cfg.regularizer:>20} {cfg.lam:>8.2g} "
              f"{cfg.lr:>5.2g} {int(state['epoch']):>7,} {loss:>10.3e} {top:>9.3f} {2 / cfg.lr:>6.3g} "
              f"{float(data.norm()):>9.3e} {pen_norm:>12.3e} {cos:>6.3f}")


if __name__ == "__main__":
    main()
