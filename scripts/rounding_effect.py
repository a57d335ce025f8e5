"""How far do last-bit differences in the matmuls (another CPU's kernels) move a training run?

Trains each case once cleanly and once per noise seed under smoothness.runtime.precision.ulp_noise (every element of
every matmul result moved by -1, 0 or +1 unit in the last place) and prints, per case and seed, the status and
epochs of both runs, the relative difference of the final epoch loss, and the largest weight difference
relative to the largest weight. Usage: python scripts/rounding_effect.py [--seeds 1 2 3]
"""
import argparse
import time

from smoothness import training
from smoothness.data import images
from smoothness.runtime import precision

CASES = [  # name, pair, N, seed, widths, spec settings
    ("784-256-1, N 128, 20 epochs", (0, 1), 128, 0, (784, 256, 1), dict(max_epochs=20)),
    ("784-256-1, N 128, 400 epochs", (0, 1), 128, 0, (784, 256, 1), dict(max_epochs=400)),
    ("784-256-1, N 64, to 1e-5", (0, 1), 64, 0, (784, 256, 1), dict()),
    ("784-32-1, N 64, lr 0.05, to 1e-3", (0, 1), 64, 1, (784, 32, 1), dict(lr=0.05, threshold=1e-3)),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    a = ap.parse_args()
    print("| case | noise seed | status clean / noisy | epochs clean / noisy | epoch loss, rel. diff | "
          "max weight diff / max weight |")
    print("|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    for name, pair, n, seed, widths, kw in CASES:
        task = images.binary_task("mnist5k", *pair)
        rows = task.subset(n, seed)
        spec = training.TrainSpec(rows, task.pool_y[rows], seed=seed, **kw)
        clean = training.train_models(task.pool_x, [spec], widths=widths)[0]
        for s in a.seeds:
            with precision.ulp_noise(s):
                noisy = training.train_models(task.pool_x, [spec], widths=widths)[0]
            dw = max(float((u - v).abs().max() / u.abs().max())
                     for u, v in zip(clean.params.tensors(), noisy.params.tensors()) if u.abs().max() > 0)
            dl = abs(clean.loss_epoch - noisy.loss_epoch) / clean.loss_epoch
            print(f"| {name} | {s} | {clean.status} / {noisy.status} | {clean.epochs} / {noisy.epochs} | "
                  f"{dl:.1e} | {dw:.1e} |", flush=True)
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
