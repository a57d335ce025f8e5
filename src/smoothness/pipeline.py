"""Train models on MNIST-binary tasks and measure them: the path shared by the CLI and the Python API."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from . import data as datasets
from . import curvature, measures, optimizers, precision, registry, regularizers, rng, training
from .errors import ConfigError
# the files of `train --save`: re-exported, part of the API
from .modelfile import SAVE_FORMAT, check_save_path, load_models, save_models  # noqa: F401
from .models import DEFAULT_ALPHA, MLPStack


@dataclass
class RunConfig:
    """Everything that defines one trained model (defaults: the paper, sec. 4.1)."""

    data: str = "mnist5k"
    pair: tuple[int, int] = (3, 8)
    n_train: int = 128
    seed: int = 0
    hidden: tuple[int, ...] = (256,)
    alpha: float = DEFAULT_ALPHA
    lr: float | None = None          # None: 0.01, or 0.1 with a path-length regularizer (paper); Adam 1e-3
    batch_size: int = training.DEFAULT_BATCH
    max_epochs: int = training.DEFAULT_MAX_EPOCHS
    threshold: float = training.DEFAULT_THRESHOLD
    measure_points: int = datasets.DEFAULT_MEASURE_POINTS
    segments: int = measures.DEFAULT_SEGMENTS
    points: int = measures.DEFAULT_POINTS
    measure_seed: int = 0
    sharpness_iters: int = 0         # power iterations for the sharpness (0: not computed)
    trace_probes: int = 0            # Hutchinson probes for the Hessian trace (0: not computed)
    regularizer: str = "none"
    lam: float = 0.0
    optimizer: str = "sgd"           # sgd (paper), gd (batch_size becomes n_train), momentum, adam
    matmul_precision: str = "fp32"   # of the training steps: fp32, tf32 (CUDA), tf32-emulated (precision.py)

    def __post_init__(self):
        try:
            regularizers.check(self.regularizer)
            optimizers.check(self.optimizer)
            precision.check(self.matmul_precision)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.lr is None:
            self.lr = optimizers.default_lr(self.optimizer, self.regularizer)
        if self.optimizer == "gd":
            self.batch_size = self.n_train   # full-batch gradient descent: one step per epoch
        if self.regularizer == "weights_product" and len(self.hidden) != 1:
            raise ConfigError("the weights_product regularizer needs one hidden layer")
        self.pair = tuple(int(v) for v in self.pair)
        self.hidden = tuple(int(v) for v in self.hidden)
        self.seed = rng.check_seed(self.seed, "seed")
        self.measure_seed = rng.check_seed(self.measure_seed, "measure_seed")
        if self.regularizer == "none" and self.lam != 0:
            raise ConfigError(f"lam {self.lam!r} needs a regularizer: with regularizer 'none' lam must be 0")
        finite = {k: math.isfinite(getattr(self, k)) for k in ("lr", "alpha", "threshold", "lam")}
        pos, nonneg = "a finite number > 0", "a finite number >= 0"
        checks = [("lr", finite["lr"] and self.lr > 0, pos), ("alpha", finite["alpha"] and self.alpha > 0, pos),
                  ("batch_size", self.batch_size >= 1, ">= 1"), ("max_epochs", self.max_epochs >= 1, ">= 1"),
                  ("threshold", finite["threshold"] and self.threshold > 0, pos),
                  ("hidden", len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden), "widths >= 1"),
                  ("measure_points", self.measure_points >= 2, ">= 2"), ("segments", self.segments >= 1, ">= 1"),
                  ("points", self.points >= 2, ">= 2"), ("lam", finite["lam"] and self.lam >= 0, nonneg),
                  ("sharpness_iters", self.sharpness_iters >= 0, ">= 0"),
                  ("trace_probes", self.trace_probes >= 0, ">= 0")]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"invalid {name}: {getattr(self, name)!r} (must be {rule})")
        if self.data not in datasets.SOURCES:
            raise ConfigError(f"unknown data source {self.data!r}; choose one of: {', '.join(datasets.SOURCES)}")
        datasets.check_pair(*self.pair)

    @property
    def widths(self) -> tuple[int, ...]:
        return (784, *self.hidden, 1)

    def batch_key(self) -> tuple:
        """Models with equal keys can share one batched program."""
        return (self.data, self.widths, self.batch_size, self.regularizer, self.optimizer, self.matmul_precision)


def resolve_device(name: str | None) -> torch.device:
    """'cpu', 'cuda' (error if absent), or 'auto' (CUDA when available)."""
    if isinstance(name, torch.device):
        return resolve_device(str(name))
    name = name or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but no CUDA device is available to PyTorch")
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda or auto")
    return torch.device(name)


def check_matmul_precision(modes, device) -> None:
    """TF32 runs on CUDA only (on a CPU it would silently train in float32)."""
    if "tf32" in modes and resolve_device(device).type != "cuda":
        raise ConfigError("matmul precision tf32 needs a CUDA device; to study its effect on a CPU use "
                          "tf32-emulated")


def measure_model(params: MLPStack, task: datasets.BinaryTask, train_idx: torch.Tensor, cfg: RunConfig,
                  device=None) -> dict[str, float]:
    """Held-out and train-set measures, losses and parameter-space measures of one trained model (a stack
    of one); measure_models does the same for many models at once."""
    return measure_models([(params, task, train_idx, cfg)], device)[0]


def measure_models(items, device=None, chunk: int = 128) -> list[dict[str, float]]:
    """measure_model for many models: items are (params, task, train_idx, cfg) with params a stack of one.

    Models that share the architecture, training size and measure settings are measured together, as one
    stack of up to `chunk` models (batched over models and segments). Each model gets the numbers it gets
    alone: the segments are common random numbers, and the power iteration stops per model.
    """
    dev = torch.device(device or "cpu")
    groups: dict[tuple, list[int]] = {}
    for i, (params, _, idx, c) in enumerate(items):
        key = (params.widths, int(idx.numel()), c.measure_points, c.segments, c.points, c.measure_seed,
               c.sharpness_iters, c.trace_probes, c.batch_size)
        groups.setdefault(key, []).append(i)
    out: list[dict | None] = [None] * len(items)
    for members in groups.values():
        for a in range(0, len(members), chunk):
            ids = members[a:a + chunk]
            for i, rec in zip(ids, _measure_group([items[i] for i in ids], dev)):
                out[i] = rec
    return out  # type: ignore[return-value]


def _by_size(xs: list[torch.Tensor]) -> dict[int, list[int]]:
    sizes: dict[int, list[int]] = {}
    for i, x in enumerate(xs):
        sizes.setdefault(x.shape[0], []).append(i)
    return sizes


def _measure_group(items, dev) -> list[dict[str, float]]:
    """Measures of models with equal widths, training size and measure settings, as one stack."""
    cfg = items[0][3]
    recs: list[dict[str, float]] = [{} for _ in items]
    p = MLPStack.cat([it[0] for it in items]).to(dev)
    xtr = torch.stack([t.pool_x[idx] for _, t, idx, _ in items]).to(dev)
    ytr = torch.stack([t.pool_y[idx] for _, t, idx, _ in items]).to(dev)
    for r, v in zip(recs, training.mse(p, xtr, ytr).tolist()):
        r["loss_train"] = v
    by_task: dict[int, list[int]] = {}
    for i, (_, t, _, _) in enumerate(items):
        by_task.setdefault(id(t), []).append(i)
    for rows in by_task.values():   # held-out sets differ in size between pairs
        t = items[rows[0]][1]
        losses = training.mse(p.select(rows), t.heldout_x.to(dev), t.heldout_y.to(dev)).tolist()
        for i, v in zip(rows, losses):
            recs[i]["loss_test"] = v
    for r, (_, t, idx, _) in zip(recs, items):
        r["fpl_lower_bound"] = measures.fpl_lower_bound(t.pool_y[idx])  # l_S of FPL for this training set
    finite = torch.stack([torch.isfinite(w).flatten(1).all(1) for w in p.tensors()]).all(0).tolist()
    ok = [i for i, f in enumerate(finite) if f]
    param = parameter_measures(p, xtr, ytr, [it[3] for it in items], finite)
    for r, vals in zip(recs, param):
        r.update(vals)
    kw = dict(segments=cfg.segments, points=cfg.points, seed=cfg.measure_seed)
    points = {key: items[rows[0]][1].measure_points(cfg.measure_points) for key, rows in by_task.items()}
    held = [points[id(t)] for _, t, _, _ in items]   # one tensor per task: models of a pair share it
    train = [t.pool_x[idx[datasets.balanced_prefix(t.pool_y[idx], cfg.measure_points)]] for _, t, idx, _ in items]
    for suffix, xs in (("", held), ("_train", train)):
        which = measures.MEASURES if suffix == "" else measures.SAMPLED
        for i in range(len(items)):
            if not finite[i]:
                recs[i].update({k + suffix: float("nan") for k in which})
        for rows in _by_size([xs[i] for i in ok]).values():
            rows = [ok[j] for j in rows]
            same = all(xs[i] is xs[rows[0]] for i in rows)
            x = xs[rows[0]] if same else torch.stack([xs[i] for i in rows])
            vals = measures.measure_stack(p.select(rows), x.to(dev), which=which, **kw)
            for k, v in vals.items():
                for i, f in zip(rows, v.tolist()):
                    recs[i][k + suffix] = f
    return recs


def parameter_measures(p: MLPStack, xtr: torch.Tensor, ytr: torch.Tensor, cfgs: list[RunConfig],
                       finite: list[bool]) -> list[dict[str, float]]:
    """Parameter-space measures of a stack on each model's training set xtr [M, n, d] (curvature.py): path
    norm, norm, distance from init, Smith et al.'s minibatch gradient norm; sharpness and Hessian trace when
    the configs ask for them (all configs alike). Models that are not finite get NaN for the curvature."""
    cfg = cfgs[0]
    seeds = torch.tensor([c.seed for c in cfgs], dtype=torch.int64)
    alphas = torch.tensor([c.alpha for c in cfgs], dtype=torch.float64)
    out = [{"parameter_norm": a, "distance_from_init": b} for a, b in
           zip(curvature.parameter_norm(p).tolist(), curvature.distance_from_init(p, seeds, alphas).tolist())]
    names = list(registry.keys(stack=False))
    if cfg.sharpness_iters:
        names += ["sharpness", "sharpness_rel_change", "sharpness_iterations"]
    if cfg.trace_probes:
        names += ["hessian_trace", "hessian_trace_se"]
    for r, f in zip(out, finite):
        if not f:
            r.update({k: float("nan") for k in names})
    ok = [i for i, f in enumerate(finite) if f]
    if not ok:
        return out
    q, x, y = p.select(ok), xtr[ok], ytr[ok]
    cols = {"path_norm": measures.path_norms(q),
            "minibatch_grad_norm": curvature.minibatch_gradient_norm(q, x, y, batch_size=cfg.batch_size,
                                                                     seed=cfg.measure_seed)}
    if cfg.sharpness_iters:
        sh = curvature.sharpness(q, x, y, iters=cfg.sharpness_iters, seed=cfg.measure_seed)
        cols.update(sharpness=sh.value, sharpness_rel_change=sh.rel_change, sharpness_iterations=sh.iterations)
    if cfg.trace_probes:
        cols["hessian_trace"], cols["hessian_trace_se"] = curvature.hessian_trace(q, x, y, probes=cfg.trace_probes,
                                                                                 seed=cfg.measure_seed)
    for k, v in cols.items():
        for i, val in zip(ok, v.tolist()):
            out[i][k] = val
    return out


def train_and_measure(configs: list[RunConfig], *, device=None, data_dir=None, progress=None,
                      on_result=None, measure_batch: int | None = None) -> list[dict]:
    """Train every config (batched where they share data, architecture and batch size) and measure.

    Returns one record per config, in order: the config, status, epochs, steps, losses, measures,
    wall time and device, plus the trained parameters under 'params' (a stack of one, on the CPU).
    on_result(i, record), if given, is called the moment config i is trained and measured.
    """
    records: list[dict | None] = [None] * len(configs)
    for i, rec in iter_train_and_measure(configs, device=device, data_dir=data_dir, progress=progress,
                                         measure_batch=measure_batch):
        records[i] = rec
        if on_result is not None:
            on_result(i, rec)
    return records  # type: ignore[return-value]


MEASURE_WAIT = 60.0   # seconds a trained model waits at most for its measure batch to fill (checked as models finish)


def measure_batch_size(requested: int | None, device) -> int:
    """Trained models measured together: `requested` (at least 1), or by default one on the CPU, where
    batching measures gains nothing (see bench), so each model is measured the moment it finishes, and
    128 on a GPU, where one model leaves it idle."""
    if requested is None:
        return 1 if resolve_device(device).type == "cpu" else 128
    if requested < 1:
        raise ConfigError(f"invalid measure batch: {requested} (use a positive number)")
    return requested


@dataclass
class _Trained:
    """A trained model waiting to be measured."""

    i: int
    cfg: RunConfig
    rec: dict
    params: MLPStack
    task: datasets.BinaryTask
    subset: torch.Tensor
    at: float


def binary_tasks(configs: list[RunConfig], data_dir=None) -> dict[tuple, datasets.BinaryTask]:
    """The binary task of every (data, pair) among configs, loaded once each."""
    tasks: dict[tuple, datasets.BinaryTask] = {}
    for c in configs:
        if (c.data, c.pair) not in tasks:
            tasks[(c.data, c.pair)] = datasets.binary_task(c.data, *c.pair, data_dir=data_dir)
    return tasks


def _measure_trained(queue: list[_Trained], dev):
    """Measure queued trained models as one call of measure_models; yield (i, full record) for each."""
    if not queue:
        return
    t0 = time.perf_counter()
    vals = measure_models([(q.params, q.task, q.subset, q.cfg) for q in queue], dev)
    sec = (time.perf_counter() - t0) / len(queue)
    for q, v in zip(queue, vals):
        yield q.i, {**q.rec, **v, "measure_seconds": sec, "measure_batch": len(queue), "device": str(dev),
                    "params": q.params}


def iter_measure_trained(items, *, device=None, data_dir=None, measure_batch: int | None = None):
    """Measure models that were trained but not measured (a grid stopped in between): items are
    (cfg, record, params) with the record that iter_train_and_measure passed to on_trained. Yields
    (j, full record) for item j, in batches of measure_batch."""
    dev = resolve_device(device)
    k = measure_batch_size(measure_batch, dev)
    tasks = binary_tasks([c for c, _, _ in items], data_dir)
    queue = []
    for j, (c, rec, params) in enumerate(items):
        task = tasks[(c.data, c.pair)]
        queue.append(_Trained(j, c, rec, params, task, task.subset(c.n_train, c.seed), 0.0))
        if len(queue) >= k:
            yield from _measure_trained(queue, dev)
            queue = []
    yield from _measure_trained(queue, dev)


def iter_train_and_measure(configs: list[RunConfig], *, device=None, data_dir=None, progress=None,
                           measure_batch: int | None = None, on_trained=None, max_wait: float = MEASURE_WAIT):
    """As train_and_measure, but yields (i, record) for config i as soon as it is trained and measured.

    Trained models are measured together, measure_batch at a time (see measure_batch_size): a
    batch is measured when it is full, when its first model has waited max_wait seconds, and when
    training ends. on_trained(i, record, params), if given, is called the moment model i finishes
    training, with its configuration, status and training record (the grid runner stores it durably
    there, so that a grid stopped before the batch is measured does not train the model again).
    """
    dev = resolve_device(device)
    k = measure_batch_size(measure_batch, dev)
    check_matmul_precision({c.matmul_precision for c in configs}, dev)
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(c.batch_key(), []).append(i)
    tasks = binary_tasks(configs, data_dir)
    queue: list[_Trained] = []
    for key, members in groups.items():
        # One input pool for the group: the pools of all pairs, concatenated.
        offsets, pools, start = {}, [], 0
        for c in (configs[i] for i in members):
            if c.pair not in offsets:
                offsets[c.pair] = start
                pools.append(tasks[(c.data, c.pair)].pool_x)
                start += pools[-1].shape[0]
        specs, subsets = [], []
        for i in members:
            c = configs[i]
            t = tasks[(c.data, c.pair)]
            sub = t.subset(c.n_train, c.seed)
            subsets.append(sub)
            specs.append(training.TrainSpec(sub + offsets[c.pair], t.pool_y[sub], seed=c.seed, lr=c.lr,
                                            alpha=c.alpha, max_epochs=c.max_epochs, threshold=c.threshold,
                                            regularizer=c.regularizer, lam=c.lam,
                                            optimizer="sgd" if c.optimizer == "gd" else c.optimizer))
        trainer = training.BatchedTrainer(torch.cat(pools), key[1], key[2], dev, matmul_precision=key[5])
        for res in trainer.iter_train(specs, progress=progress):
            i = members[res.index]
            c = configs[i]
            rec = {**asdict(c), "pair": list(c.pair), "hidden": list(c.hidden),
                   "status": res.status, "epochs": res.epochs, "steps": res.steps,
                   "loss_epoch": res.loss_epoch, "train_seconds": res.seconds}
            if on_trained is not None:
                on_trained(i, rec, res.params)
            queue.append(_Trained(i, c, rec, res.params, tasks[(c.data, c.pair)], subsets[res.index],
                                  time.perf_counter()))
            if len(queue) >= k or time.perf_counter() - queue[0].at >= max_wait:
                yield from _measure_trained(queue, dev)
                queue = []
    yield from _measure_trained(queue, dev)

