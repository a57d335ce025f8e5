"""`smoothness bench --family cnn`: training throughput of M small CNNs as one stacked program (the package's
trainer) against the two programs a PyTorch user would write instead, in one run on one machine:

- a loop of nn.Modules, one torch.optim.SGD each, every model one step per round;
- PyTorch's model-ensembling recipe: torch.func.stack_module_state, then vmap over the models of grad of the
  batch loss, and the SGD update on the stacked tensors.

The net: 1x28x28 -> conv 3x3 (8) -> ReLU -> 2x2 max pool -> conv 3x3 (16) -> ReLU -> max pool -> linear, one
output (2,033 parameters), on mnist5k pair 3/8, each model on its own 128 points in minibatches of 64, SGD at lr
0.01, the loss threshold 0 so that every model runs the same number of steps. With --penalty gradient_norm each
step adds lam * GN (eq. 4) to the loss, the loop and the recipe by double backward (the recipe differentiates
torch.func.vjp of the batch with respect to the points inside the loss).
Rates are model-steps per second of wall-clock time, initialization excluded, best of `repeats` rounds.
"""
from __future__ import annotations

import copy
import time

import torch
from torch.func import functional_call, grad, stack_module_state, vjp, vmap

from smoothness import training
from smoothness.cli.bench import sync
from smoothness.data import images
from smoothness.models.families import build

N_POINTS = 128
LAM = 1e-4
LR = 0.01
SPEC = {"family": "cnn", "channels": [8, 16], "kernel": 3, "pool": "max"}


def _setup(m: int, device):
    """The task, each model's points and targets, and m freshly initialized modules (the family's init)."""
    t = images.binary_task("mnist5k", 3, 8)
    fam = build(SPEC, None, (1, 28, 28))
    subs = [t.subset(N_POINTS, i) for i in range(m)]
    p = fam.init(list(range(m)), 1.0, device=device)
    mods = [fam.module(p, i).inner.to(device) for i in range(m)]
    return t, fam, subs, mods


def _loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out[:, 0] - y).square().mean()


def _gn(f, x: torch.Tensor) -> torch.Tensor:
    """GN of the batch, the mean over its points of ||grad_x f||, through torch.func.vjp (differentiable)."""
    out, pull = vjp(f, x)
    g = pull(torch.ones_like(out))[0]
    return g.flatten(1).norm(dim=1).mean()


def _batches(t, subs, device, steps: int):
    """Per step, every model's minibatch (x [M, 64, 1, 28, 28], y [M, 64]): each model's points reshuffled per epoch."""
    gen = torch.Generator().manual_seed(0)
    x = t.pool_x.reshape(-1, 1, 28, 28)
    perms = None
    for s in range(steps):
        if s % (N_POINTS // training.DEFAULT_BATCH) == 0:
            perms = [sub[torch.randperm(N_POINTS, generator=gen)] for sub in subs]
        i = (s % (N_POINTS // training.DEFAULT_BATCH)) * training.DEFAULT_BATCH
        idx = torch.stack([p[i:i + training.DEFAULT_BATCH] for p in perms])
        yield x[idx].to(device), t.pool_y[idx].to(device)


def loop_rate(m: int, steps: int, device, penalty: bool) -> float:
    """Model-steps/s of a loop over m modules, each with its own torch.optim.SGD."""
    t, _, subs, mods = _setup(m, device)
    opts = [torch.optim.SGD(mod.parameters(), lr=LR) for mod in mods]
    work = list(_batches(t, subs, device, steps))
    sync(device)
    t0 = time.perf_counter()
    for xb, yb in work:
        for j, (mod, opt) in enumerate(zip(mods, opts)):
            opt.zero_grad(set_to_none=True)
            x = xb[j].requires_grad_(penalty)
            out = mod(x)
            obj = _loss(out, yb[j])
            if penalty:
                g = torch.autograd.grad(out.sum(), x, create_graph=True)[0]
                obj = obj + LAM * g.flatten(1).norm(dim=1).mean()
            obj.backward()
            opt.step()
    sync(device)
    return m * steps / (time.perf_counter() - t0)


def vmap_rate(m: int, steps: int, device, penalty: bool) -> float:
    """Model-steps/s of torch.func's ensembling recipe: stack_module_state, vmap(grad(loss)), SGD on the stack."""
    t, _, subs, mods = _setup(m, device)
    params, buffers = stack_module_state(mods)
    base = copy.deepcopy(mods[0]).to("meta")

    def loss(p, b, x, y):
        def f(xx):
            return functional_call(base, (p, b), (xx,))
        obj = _loss(f(x), y)
        return obj + LAM * _gn(lambda xx: f(xx)[:, 0], x) if penalty else obj

    step = vmap(grad(loss), in_dims=(0, 0, 0, 0))
    work = list(_batches(t, subs, device, steps))
    sync(device)
    t0 = time.perf_counter()
    for xb, yb in work:
        g = step(params, buffers, xb, yb)
        with torch.no_grad():
            for k in params:
                params[k].sub_(LR * g[k])
    sync(device)
    return m * steps / (time.perf_counter() - t0)


def stacked_rate(m: int, steps: int, device, penalty: bool) -> float:
    """Model-steps/s of the package's trainer on the m CNNs as one stacked program."""
    t, fam, subs, _ = _setup(m, device)
    epochs = max(1, steps // (N_POINTS // training.DEFAULT_BATCH))
    reg = "gradient_norm" if penalty else "none"
    specs = [training.TrainSpec(sub, t.pool_y[sub], seed=i, lr=LR, regularizer=reg, lam=LAM if penalty else 0.0,
                                max_epochs=epochs, threshold=0.0) for i, sub in enumerate(subs)]
    trainer = training.BatchedTrainer(t.pool_x, fam, device=device)
    trainer.train(specs[:1])   # warm-up
    sync(device)
    t0 = time.perf_counter()
    res = trainer.train(specs)
    sync(device)
    return sum(r.steps for r in res) / (time.perf_counter() - t0 - trainer.admit_seconds)


PROGRAMS = {"loop of modules": loop_rate, "torch.func vmap recipe": vmap_rate, "stacked (smoothness)": stacked_rate}


def run(models: list[int], device, steps: int = 40, repeats: int = 2, penalty: bool = False,
        out=print) -> list[dict]:
    """Print and return the rates of the three programs for each M (best of `repeats`), and each against the
    loop."""
    out(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; CNN 1x28x28 -> "
        f"conv 8 -> conv 16 -> 1 (2,033 parameters), batch {training.DEFAULT_BATCH}, {steps} steps per model, "
        + (f"loss + {LAM:g} GN" if penalty else "plain SGD"))
    out(f"{'program':<26}{'M':>5}{'model-steps/s':>16}{'vs loop':>9}")
    rows = []
    for m in models:
        loop = None
        for name, fn in PROGRAMS.items():
            fn(1, 4, device, penalty)   # warm-up
            rate = max(fn(m, steps, device, penalty) for _ in range(repeats))
            loop = loop or rate
            rows.append({"program": name, "models": m, "rate": rate, "vs_loop": rate / loop})
            out(f"{name:<26}{m:>5}{rate:>16.1f}{rate / loop:>9.2f}")
    return rows
