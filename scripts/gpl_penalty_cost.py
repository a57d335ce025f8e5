"""The cost of GPL's penalty gradient (paper eq. 11 on a batch's segments, training/penalties.py) in its two forms:
the sparse form a CPU uses (each unit changes sign at most once along a segment, so du is sparse) and the dense
Gram-matrix form other devices use, on the paper's 784-256-1 net, with the batch's pre-activations from real data.
Also the density of du, which sets the sparse form's cost, and a plain SGD step of the same batches for scale.

    .venv/bin/python scripts/gpl_penalty_cost.py                       # a fresh net (alpha 0.01), Fashion-MNIST 5/9
    .venv/bin/python scripts/gpl_penalty_cost.py --snapshot runs/fashion-table2-10k/snapshots/KEY.pt

A snapshot is a model in training that `smoothness run` keeps (OUT/snapshots/KEY.pt). Times are the best of
--repeats passes over --batches batches, in milliseconds per batch, on the threads PyTorch uses here.
"""
from __future__ import annotations

import argparse
import time

import torch

from smoothness.data import images
from smoothness.models import MLPStack, init_mlp, mse
from smoothness.training import penalties


def best_ms(fn, batches, repeats: int) -> float:
    fn(batches[0])
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        best = min(best, (time.perf_counter() - t0) / len(batches) * 1e3)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--snapshot", help="a snapshot file of a 784-256-1 model (default: a fresh net, alpha 0.01)")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--pair", type=int, nargs=2, default=(5, 9))
    ap.add_argument("--points", type=int, nargs="+", default=[10, 100], help="points per penalty segment")
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    if a.snapshot:
        state = torch.load(a.snapshot, map_location="cpu", weights_only=True)
        p, where = MLPStack.from_state_dict(state["params"]), f"{a.snapshot} (epoch {state['epoch']})"
    else:
        p, where = init_mlp([0], (784, 256, 1), alpha=0.01), "a fresh net (alpha 0.01, seed 0)"
    task = images.binary_task(a.data, *a.pair)
    g = torch.Generator().manual_seed(0)
    rows = torch.randperm(len(task.pool_y), generator=g)[: 64 * a.batches].reshape(a.batches, 1, 64)
    batches = [(task.pool_x[r], task.pool_y[r]) for r in rows]
    W1, b1 = p.weights[0], p.biases[0]
    valid = torch.ones(1, 64, dtype=torch.bool)
    lam = torch.tensor([1e-5])
    print(f"GPL penalty gradient on {where}; {a.data} {a.pair[0]}/{a.pair[1]}, {a.batches} batches of 64; "
          f"torch {torch.__version__}, CPU threads: {torch.get_num_threads()}")

    def plain(b):
        q = p.as_leaves()
        with torch.enable_grad():
            torch.autograd.grad(mse(q, b[0], b[1], valid)[0].sum(), q.tensors())
    plain_ms = best_ms(plain, batches, a.repeats)
    print(f"plain SGD step's gradient: {plain_ms:.3f} ms")
    print(f"{'points':>6} {'du density':>11} {'sparse ms':>10} {'dense ms':>9} {'dense/sparse':>13}")
    for points in a.points:
        zs = [torch.baddbmm(b1[:, None], x, W1.transpose(1, 2)) for x, _ in batches]
        nnz = sum(len(penalties.sign_changes(z, valid, points)[0]) for z in zs)
        density = nnz / (len(zs) * 32 * (points - 1) * W1.shape[1])
        sparse = best_ms(lambda z, k=points: penalties.penalty_grad_gradient_path_length(p, lam, z, valid, k), zs,
                         a.repeats)
        dense = best_ms(lambda z, k=points: penalties.gradient_path_length_dense_grad(p, lam, z, valid, k), zs,
                        a.repeats)
        print(f"{points:>6} {density:>11.4%} {sparse:>10.3f} {dense:>9.3f} {dense / sparse:>13.2f}")


if __name__ == "__main__":
    main()
