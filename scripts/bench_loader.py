"""The measures of one model over a DataLoader against the same measures over one tensor of the same points: the
wall time of each and their ratio, and the largest relative difference of the values (which should be float
rounding). The model is the small CNN of examples/conv_digits.py (3,834 parameters) on seeded random 8 x 8 images
with 10 classes; with --write DIR it also writes DIR/cnn.pt (its state dict) and DIR/data.npz (the points and
labels), to time `smoothness measure` on the same model:

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_loader.py                   # 400 points, batches of 64
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_loader.py --batch 32 --repeat 3
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_loader.py --write /tmp/cnn
    OMP_NUM_THREADS=1 .venv/bin/smoothness measure /tmp/cnn/cnn.pt --factory examples.conv_digits:convnet \\
        --inputs /tmp/cnn/data.npz
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.conv_digits import convnet  # noqa: E402

from smoothness import measures  # noqa: E402

WHICH = ("gradient_norm", "path_lengths", "lipschitz", "loss", "sharpness", "hessian_trace")
KEYS = {"path_lengths": ("function_path_length", "gradient_path_length"),
        "lipschitz": ("lipschitz_lower", "lipschitz_upper")}   # else the name


def data(n: int, seed: int = 0):
    """n seeded random images [n, 1, 8, 8] in [0, 1] whose label is a fixed random linear function's argmax."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    w = torch.randn(64, 10, generator=g)
    return x, (x.reshape(n, -1) @ w).argmax(1)


def trained(x, y, epochs: int = 30, seed: int = 0):
    """The CNN after a few epochs of Adam on (x, y), in eval mode."""
    torch.manual_seed(seed)
    f = convnet()
    opt = torch.optim.Adam(f.parameters(), lr=3e-3)
    for _ in range(epochs):
        f.train()
        for i in range(0, len(y), 64):
            opt.zero_grad()
            F.cross_entropy(f(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    return f.eval()


def run(f, x_or_loader, y, settings, repeat: int):
    """(the best wall seconds of `repeat` runs, the values, the seconds of each measure of the best run)."""
    best, got = math.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        m = measures.measure_model(f, x_or_loader, y, WHICH, settings, progress=False)
        s = time.perf_counter() - t
        if s < best:
            best, got = s, m
    return best, got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="points (default: 400)")
    ap.add_argument("--batch", type=int, default=64, help="the loader's batch size (default: 64)")
    ap.add_argument("--segments", type=int, default=100, help="path-length segments (default: 100)")
    ap.add_argument("--points", type=int, default=20, help="points per segment (default: 20)")
    ap.add_argument("--steps", type=int, default=20, help="Lanczos steps (default: 20)")
    ap.add_argument("--probes", type=int, default=20, help="trace probes (default: 20)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each, the best counted (default: 2)")
    ap.add_argument("--write", default=None, metavar="DIR", help="also write DIR/cnn.pt and DIR/data.npz")
    a = ap.parse_args()
    x, y = data(a.n)
    f = trained(x, y)
    if a.write:
        out = Path(a.write)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(f.state_dict(), out / "cnn.pt")
        np.savez(out / "data.npz", x=x.numpy(), y=y.numpy())
        print(f"wrote {out / 'cnn.pt'} and {out / 'data.npz'} ({a.n} points)")
    s = measures.Settings(segments=a.segments, points=a.points, steps=a.steps, probes=a.probes)
    loader = DataLoader(TensorDataset(x, y), batch_size=a.batch, shuffle=False)
    t_tensor, m_tensor = run(f, x, y, s, a.repeat)
    t_loader, m_loader = run(f, loader, None, s, a.repeat)
    print(f"{a.n} points, loader batches of {a.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"{'measure':<16}{'tensor s':>10}{'loader s':>10}{'ratio':>8}{'rel. diff':>11}")
    for name in WHICH:
        ts, ls = m_tensor.seconds[name], m_loader.seconds[name]
        keys = KEYS.get(name, (name,))
        diff = max(abs(float(m_loader.values[k]) - float(m_tensor.values[k]))
                   / max(abs(float(m_tensor.values[k])), 1e-12) for k in keys)
        print(f"{name:<16}{ts:>10.3f}{ls:>10.3f}{ls / ts:>8.2f}{diff:>11.2e}")
    print(f"{'all':<16}{t_tensor:>10.3f}{t_loader:>10.3f}{t_loader / t_tensor:>8.2f}")


if __name__ == "__main__":
    main()
