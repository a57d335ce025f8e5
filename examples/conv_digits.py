"""A worked example beyond the paper's MLPs: a small convolutional classifier on scikit-learn's bundled 8 x 8 digits
(1,797 real handwritten digits, 10 classes), trained for a few epochs, then measured with the package's measures
for any module (docs/examples.md).

    .venv/bin/python examples/conv_digits.py                 # the run shown in docs/examples.md
    .venv/bin/python examples/conv_digits.py --epochs 2 --train 300 --segments 20

The measures see the net as a function of the 64 pixel values with 10 outputs (the logits): GN is the mean
Frobenius norm of the Jacobian, FPL and GPL use the 2-norm of the logits' change and the Frobenius norm of the
Jacobian's change along segments between held-out images; the margin (top logit minus the runner-up) is measured
as a scalar function too, with its Lipschitz lower bound.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.nn import functional as F

from smoothness.measures import inputspace as measures


def digits(seed: int = 0):
    """The 1,797 digits as images [n, 1, 8, 8] in [0, 1] and labels [n], in a seeded random order."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return x[order], y[order]


def convnet() -> nn.Module:
    """Conv(8) - BatchNorm - ReLU - MaxPool - Conv(16) - ReLU - Flatten - Dropout(0.2) - Linear(10)."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(16 * 4 * 4, 10))


def measure(f: nn.Module, x: torch.Tensor, segments: int, points: int) -> dict[str, float]:
    """The measures of f (in eval mode) on the held-out images x."""
    f.eval()
    out = {"GN (logits, Frobenius)": measures.gradient_norm(f, x),
           "FPL (logits, 2-norm)": measures.function_path_length(f, x, segments=segments, points=points),
           "GPL (Jacobian, Frobenius)": measures.gradient_path_length(f, x, segments=segments, points=points),
           "GN (margin)": measures.gradient_norm(f, x, output="margin")}
    out["Lipschitz lower bound (margin)"] = measures.lipschitz_bounds(f, x, output="margin")[0]
    return out


def main(train: int = 1200, epochs: int = 10, segments: int = 200, points: int = 20, seed: int = 0,
         verbose: bool = True) -> dict:
    """Train the net on the first `train` digits, measure it before and after on the rest; returns the numbers."""
    torch.manual_seed(seed)
    x, y = digits(seed)
    xtr, ytr, xte, yte = x[:train], y[:train], x[train:], y[train:]
    f = convnet()
    before = measure(f, xte, segments, points)
    opt = torch.optim.Adam(f.parameters(), lr=3e-3)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        f.train()
        perm = torch.randperm(train, generator=torch.Generator().manual_seed(seed + epoch))
        for i in range(0, train, 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(f(xtr[b]), ytr[b]).backward()
            opt.step()
    f.eval()
    with torch.no_grad():
        acc = float((f(xte).argmax(1) == yte).float().mean())
        train_acc = float((f(xtr).argmax(1) == ytr).float().mean())
    trained_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    after = measure(f, xte, segments, points)
    result = {"train": train, "held_out": len(yte), "epochs": epochs, "train_accuracy": train_acc,
              "test_accuracy": acc, "train_seconds": trained_s, "measure_seconds": time.perf_counter() - t0,
              "before": before, "after": after}
    if verbose:
        print(f"digits: {train} training images, {len(yte)} held out; {epochs} epochs of Adam in {trained_s:.1f} s; "
              f"train accuracy {train_acc:.3f}, test accuracy {acc:.3f}")
        print(f"{'measure (held-out images)':<34}{'at init':>10}{'trained':>10}")
        for k in before:
            print(f"{k:<34}{before[k]:>10.4g}{after[k]:>10.4g}")
        print(f"measured in {result['measure_seconds']:.1f} s ({segments} segments x {points} points)")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=1200)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--segments", type=int, default=200)
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    main(a.train, a.epochs, a.segments, a.points, a.seed)
