"""`smoothness bench`: training throughput of the batched engine against a one-model PyTorch loop, and the
end-to-end wall time of a grid, measured in one run on one machine.

Throughput is in model-steps per second for a 784-256-1 ReLU net, SGD with batch 64 on 128 points of an
mnist5k pair (pair i % 45 for model i); the loss threshold is 0, so every model runs the same number of steps.
The reference loop is the textbook one: nn.Sequential, torch.optim.SGD, shuffled minibatches, one model.
"""
from __future__ import annotations

import os
import tempfile
import time

import torch
from torch import nn

from smoothness import training
from smoothness.data import images
from smoothness.runtime import precision
from smoothness.runtime.values import counted
from smoothness.training.trainer import as_family


def sync(device) -> None:
    """Wait for the device's queued work (CUDA), so that a timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def _mode(tf32: bool) -> str:
    return "tf32" if tf32 else "fp32"


def loop_throughput(steps: int, device, tf32: bool = False) -> float:
    """Model-steps per second of a plain one-model PyTorch training loop (TF32 matmuls if tf32, on CUDA)."""
    t = images.binary_task("mnist5k", 3, 8)
    sub = t.subset(128, 0)
    x, y = t.pool_x[sub].to(device), t.pool_y[sub].to(device)
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 1)).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)

    def run(n):
        done = 0
        while done < n:
            perm = torch.randperm(128, generator=gen).to(device)
            for i in range(0, 128, 64):
                b = perm[i:i + 64]
                opt.zero_grad(set_to_none=True)
                (net(x[b])[:, 0] - y[b]).square().mean().backward()
                opt.step()
                done += 1
        return done

    with precision.matmuls(_mode(tf32), device):
        run(20)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        done = run(steps)
        sync(device)
    return done / (time.perf_counter() - t0)


def batched_throughput(m: int, steps: int, device, tf32: bool = False) -> tuple[float, float]:
    """(model-steps per second, seconds spent initializing the models) of the batched engine training
    m models for `steps` steps each; the rate excludes the initialization, as the loop's does."""
    tasks = [images.binary_task("mnist5k", *images.ALL_PAIRS[i]) for i in range(min(m, 45))]
    pool = torch.cat([t.pool_x for t in tasks])
    specs = []
    for i in range(m):
        t = tasks[i % len(tasks)]
        sub = t.subset(128, i // 45)
        specs.append(training.TrainSpec(sub + (i % len(tasks)) * t.pool_x.shape[0], t.pool_y[sub], seed=i,
                                        max_epochs=max(1, steps // 2), threshold=0.0))
    trainer = training.BatchedTrainer(pool, device=device, matmul_precision=_mode(tf32))
    trainer.train(specs[:1])  # warm-up
    sync(device)
    t0 = time.perf_counter()
    res = trainer.train(specs)
    sync(device)
    return sum(r.steps for r in res) / (time.perf_counter() - t0 - trainer.admit_seconds), trainer.admit_seconds


def steps_for(m: int, budget: int, cap: int = 400) -> int:
    """Steps per model so that m models take about `budget` model-steps (even, between 2 and cap)."""
    return max(2, min(cap, budget // m) // 2 * 2)


def grid_wall_time(grid_name: str, device, tf32: bool = False) -> tuple[float, str]:
    """Wall time of training, measuring and storing a whole grid (a preset or YAML file) into a fresh store."""
    from smoothness.experiments.configuration import grid as grid_mod
    from smoothness.experiments.running import runner
    g = grid_mod.resolve(grid_name)
    if tf32:
        g.matmul_precision = "tf32"
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        s = runner.run_grid(g, d, device=device, progress=False, save_weights=False)
        return time.perf_counter() - t0, s.line().split("; store")[0]


def measure_seconds(m: int, device, alone: int = 10) -> tuple[float, float]:
    """Seconds to measure m models (784-256-1, the paper's estimators and settings, on their training sets
    of 128 points of pair i % 45) with pipeline.measure_models, batched; and the seconds per model when
    `alone` of them are measured one at a time."""
    from smoothness import models as models_mod
    from smoothness.experiments.running import pipeline
    tasks = [images.binary_task("mnist5k", *images.ALL_PAIRS[i]) for i in range(min(m, 45))]
    items = []
    for i in range(m):
        c = pipeline.RunConfig(pair=images.ALL_PAIRS[i % 45], n_train=128, seed=i // 45)
        t = tasks[i % len(tasks)]
        items.append((models_mod.init_mlp([c.seed], c.widths, 1.0), t, t.subset(128, c.seed), c))
    pipeline.measure_models(items[:1], device)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    pipeline.measure_models(items, device)
    sync(device)
    t1 = time.perf_counter()
    for it in items[:alone]:
        pipeline.measure_trained(*it, device)
    sync(device)
    return t1 - t0, (time.perf_counter() - t1) / min(alone, m)


def step_rate(family, batch_size: int, device, steps: int = 240, loss: str = "mse",
              regularizer: str = "none", lam: float = 0.0, points: int | None = None,
              budget: float | None = None) -> float:
    """Plain SGD steps per second of one model of this family (a models.Family, or MLP widths) and batch size in
    the batched engine, on random data (N = 12 batches; loss threshold 0, so that it runs every step): the unit of
    work_left's estimate. With a regularizer, the rate of steps with that penalty (lam, points per penalty
    segment) instead. With a budget (seconds), two steps are timed first, and they give the rate where `steps`
    (with their warm-up epoch) would take longer, so that a large model's estimate does not cost minutes."""
    fam = as_family(family)
    kw = dict(loss=loss, regularizer=regularizer, lam=lam, points=points)
    if budget is not None:   # two steps first: a model whose 12-step epochs would not fit the budget is timed on them
        rate = _timed_steps(fam, batch_size, device, 2, 1, **kw)
        if (12 + max(12, steps)) / rate > budget:
            return rate
    return _timed_steps(fam, batch_size, device, 12, max(1, steps // 12), **kw)


def _timed_steps(fam, batch_size: int, device, batches: int, epochs: int, loss: str, regularizer: str, lam: float,
                 points: int | None) -> float:
    """Steps per second over `epochs` epochs of `batches` steps of one model on random data, after a warm-up
    epoch."""
    n = batches * batch_size
    gen = torch.Generator().manual_seed(0)
    pool = torch.rand(n, fam.input_dim, generator=gen)
    if fam.outputs == 1:
        targets = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    else:   # class labels 0..K-1, held as floats as the trainer keeps them
        targets = torch.randint(0, fam.outputs, (n,), generator=gen).float()
    trainer = training.BatchedTrainer(pool, fam, batch_size=batch_size, device=device)
    extra = {} if points is None else {"penalty_points": points}

    def spec(epochs):
        return training.TrainSpec(torch.arange(n), targets, lr=0.01, max_epochs=epochs, threshold=0.0, loss=loss,
                                  regularizer=regularizer, lam=lam, **extra)
    trainer.train([spec(1)])   # warm-up
    sync(device)
    t0 = time.perf_counter()
    res = trainer.train([spec(epochs)])
    sync(device)
    return res[0].steps / (time.perf_counter() - t0 - trainer.admit_seconds)


def step_costs(configs, family, batch_size: int, device, plain_rate: float, steps: int = 24,
               budget: float | None = None) -> dict:
    """For a family without the MLP's closed forms (whose costs regularizers.TABLE holds, measured): the cost of a
    step with each penalty among `configs`, in plain steps of this family, timed now ({(regularizer, points):
    cost}; `steps` penalized steps each, after a warm-up epoch)."""
    costs = {}
    for c in configs:
        what = (c.regularizer, c.penalty_points)
        if c.regularizer != "none" and what not in costs:
            rate = step_rate(family, batch_size, device, steps=steps, loss=c.loss, regularizer=c.regularizer,
                             lam=max(c.lam, 1e-6), points=c.penalty_points, budget=budget)
            costs[what] = plain_rate / rate
    return costs


def busy_note(load: float, cores: int) -> str:
    """A line for a rate timed while other processes held the cores (1-minute load average above cores - 0.5):
    the rate is then low and the time it gives high; '' on a machine with a core to spare."""
    if load <= cores - 0.5:
        return ""
    return (f"the machine was busy when the rate was timed (load {load:.1f} on {counted(cores, 'core')}): on an "
            "idle machine the rate is higher and the time shorter")


def machine_load() -> tuple[float, int]:
    """(1-minute load average, cores this process may use); the load is 0 where the system does not report one."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return load, cores


STEP_COST_N = 768   # training size of the step-cost benchmark (12 steps an epoch; the last batch is full)


def regularizer_costs(m: int, device, steps: int = 240, repeats: int = 2, out=print) -> list[dict]:
    """The cost of one training step with each regularizer (paper eq. 15, regularizers.py) against a plain SGD step,
    for m models of the paper's 784-256-1 net as one batched program (batch 64, N = 768 of mnist5k pair 3/8, loss
    threshold 0 so that every model runs `steps` steps); the path-length penalties with 10 (default) and 100 points
    per segment. Best of `repeats` runs each. Prints a table; returns its rows."""
    t = images.binary_task("mnist5k", 3, 8)
    sub = t.subset(STEP_COST_N, 0)
    epochs = max(1, steps // (STEP_COST_N // training.DEFAULT_BATCH))
    cases = [("none", 10), ("gradient_norm", 10), ("gradient_norm_squared", 10), ("weights_product", 10),
             ("path_norm", 10), ("function_path_length", 10), ("gradient_path_length", 10),
             ("function_path_length", 100), ("gradient_path_length", 100), ("minibatch_gradient_norm", 10)]
    out(f"step cost: device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; 784-256-1 net, "
        f"batch 64, N = {STEP_COST_N}, M = {m}, {epochs * STEP_COST_N // training.DEFAULT_BATCH} steps per model")
    out(f"{'regularizer':<26}{'points':>7}{'model-steps/s':>15}{'plain steps':>13}")
    rows, plain = [], None
    trainer = training.BatchedTrainer(t.pool_x, device=device)
    for reg, points in cases:
        specs = [training.TrainSpec(sub, t.pool_y[sub], seed=i, lr=0.01, regularizer=reg,
                                    lam=0.0 if reg == "none" else 1e-5, max_epochs=epochs, threshold=0.0,
                                    penalty_points=points) for i in range(m)]
        trainer.train(specs[:1])   # warm-up
        best = 0.0
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            res = trainer.train(specs)
            sync(device)
            best = max(best, sum(r.steps for r in res) / (time.perf_counter() - t0 - trainer.admit_seconds))
        plain = plain or best
        rows.append({"regularizer": reg, "points": points, "rate": best, "cost": plain / best})
        shown = points if reg in ("function_path_length", "gradient_path_length") else ""
        out(f"{reg:<26}{shown:>7}{best:>15.0f}{plain / best:>13.2f}")
    return rows


def run(models: list[int], device, budget: int, grid: str | None, out=print, measure: int = 0,
        tf32: bool = False) -> list[dict]:
    """Print and return the benchmark table (and the grid's wall time unless grid is None; and the time to
    measure `measure` models if it is positive). tf32: TF32 training matmuls (CUDA; measures stay fp32)."""
    out(f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; 784-256-1 net, batch 64, "
        f"{_mode(tf32)} training matmuls")
    out(f"{'engine':<24}{'M':>6}{'steps/model':>13}{'model-steps/s':>16}{'vs loop':>9}{'init s':>9}")
    rows = []
    ref = loop_throughput(steps_for(1, budget, cap=2000), device, tf32)
    rows.append({"engine": "one-model torch loop", "models": 1, "steps": steps_for(1, budget, 2000), "rate": ref})
    out(f"{'one-model torch loop':<24}{1:>6}{rows[0]['steps']:>13}{ref:>16.0f}{1.0:>9.2f}")
    for m in models:
        s = steps_for(m, budget)
        r, init = batched_throughput(m, s, device, tf32)
        rows.append({"engine": "batched", "models": m, "steps": s, "rate": r, "init_seconds": init})
        out(f"{'batched':<24}{m:>6}{s:>13}{r:>16.0f}{r / ref:>9.2f}{init:>9.2f}")
    if grid:
        sec, line = grid_wall_time(grid, device, tf32)
        rows.append({"engine": f"grid {grid}", "seconds": sec})
        out(f"end to end, {line}: {sec:.1f} s")
    if measure:
        sec, per = measure_seconds(measure, device)
        rows.append({"engine": "measure", "models": measure, "seconds": sec, "alone_seconds_per_model": per})
        out(f"measuring {measure} models (GN, GN², FPL, GPL, WP on held-out and training points, 1000 segments x "
            f"100 points, parameter-space measures): {sec:.1f} s batched; one at a time {per:.2f} s per model")
    return rows
