"""A worked example beyond the paper's MLPs: a small convolutional classifier on scikit-learn's bundled 8 x 8 digits
(1,797 real handwritten digits, 10 classes), trained with cross-entropy, then measured with the package's measures
for any module: the input-space smoothness measures on held-out images and the curvature of the training loss, each
with its standard error and its cost (docs/examples.md).

    .venv/bin/python examples/conv_digits.py                 # the run shown in docs/examples.md
    .venv/bin/python examples/conv_digits.py --epochs 2 --train 300 --segments 20 --points 8 --probes 8

The input-space measures see the net as a function of the 64 pixel values with 10 outputs (the logits): GN is the
mean Frobenius norm of the Jacobian, FPL and GPL use the 2-norm of the logits' change and the Frobenius norm of the
Jacobian's change along segments between held-out images; the Lipschitz bracket is that of the margin (top logit
minus the runner-up). The curvature is of the cross-entropy on the training images.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.nn import functional as F

from smoothness import measures
from smoothness.report import figures


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


def measure(f: nn.Module, x_held: torch.Tensor, x_train, y_train, segments: int, points: int, probes: int,
            curvature: bool = True):
    """The measures of f (in eval mode): input space on the held-out images, curvature on the training set."""
    f.eval()
    s = measures.Settings(segments=segments, points=points, probes=probes, runs=4, steps=60)
    got = measures.measure_model(f, x_held, None, ("gradient_norm", "path_lengths", "lipschitz"), s, progress=False)
    if curvature:
        more = measures.measure_model(f, x_train, y_train, ("loss", "sharpness", "hessian_trace", "density"), s,
                                      progress=False)
        got.values.update(more.values)
        got.seconds.update(more.seconds)
        got.density = more.density
    return got


def main(train: int = 1200, epochs: int = 10, segments: int = 1000, points: int = 100, probes: int = 100,
         seed: int = 0, verbose: bool = True, density_png=None) -> dict:
    """Train the net on the first `train` digits, measure it before and after on the rest; returns the numbers."""
    torch.manual_seed(seed)
    x, y = digits(seed)
    xtr, ytr, xte, yte = x[:train], y[:train], x[train:], y[train:]
    f = convnet()
    before = measure(f, xte, xtr, ytr, segments, points, probes, curvature=False)
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
    after = measure(f, xte, xtr, ytr, segments, points, probes)
    result = {"train": train, "held_out": len(yte), "epochs": epochs, "train_accuracy": train_acc,
              "test_accuracy": acc, "train_seconds": trained_s, "before": before, "after": after,
              "parameters": sum(p.numel() for p in f.parameters()), "model": f,
              "data": {"train": (xtr, ytr), "held_out": (xte, yte)}}
    if density_png:
        figures.density_figure(after.density, density_png, "Hessian eigenvalue density, trained conv net",
                               replace=True, loss="cross_entropy", points=train)
    if verbose:
        print(f"digits: {train} training images, {len(yte)} held out; {epochs} epochs of Adam in {trained_s:.1f} s; "
              f"train accuracy {train_acc:.3f}, test accuracy {acc:.3f}; {result['parameters']:,} parameters")
        rows = [("measure", "at init", "trained", "n", "seconds")]
        rows += [(k, "" if before.values.get(k) is None else str(before.values[k]), str(v), str(v.n or "exact"),
                  f"{after.seconds_of(k):.2f}") for k, v in after.values.items()]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for r in rows:
            print(r[0].ljust(widths[0]) + "".join("  " + c.rjust(w) for c, w in zip(r[1:], widths[1:])))
        print(f"input space on the {len(yte)} held-out images ({segments} segments x {points} points); curvature of "
              f"the cross-entropy on the {train} training images ({probes} probes; density: 4 runs x 60 steps)")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=1200)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--segments", type=int, default=1000)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--probes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--density", default=None, metavar="PNG", help="draw the trained net's eigenvalue density here")
    a = ap.parse_args()
    main(a.train, a.epochs, a.segments, a.points, a.probes, a.seed, density_png=a.density)
