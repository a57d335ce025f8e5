"""Train models on MNIST-binary tasks and measure them: the path shared by the CLI and the Python API."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import data as datasets
from . import curvature, measures, optimizers, regularizers, training
from .errors import ConfigError
from .models import DEFAULT_ALPHA, MLPStack

SAVE_FORMAT = "smoothness-models/1"


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

    def __post_init__(self):
        try:
            regularizers.check(self.regularizer)
            optimizers.check(self.optimizer)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.lr is None:
            self.lr = optimizers.ADAM_LR if self.optimizer == "adam" else regularizers.default_lr(self.regularizer)
        if self.optimizer == "gd":
            self.batch_size = self.n_train   # full-batch gradient descent: one step per epoch
        if self.regularizer == "weights_product" and len(self.hidden) != 1:
            raise ConfigError("the weights_product regularizer needs one hidden layer")
        self.pair = tuple(int(v) for v in self.pair)
        self.hidden = tuple(int(v) for v in self.hidden)
        checks = [("lr", self.lr > 0), ("alpha", self.alpha > 0), ("batch_size", self.batch_size >= 1),
                  ("max_epochs", self.max_epochs >= 1), ("threshold", self.threshold > 0),
                  ("hidden", len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden)),
                  ("measure_points", self.measure_points >= 2), ("segments", self.segments >= 1),
                  ("points", self.points >= 2), ("lam", self.lam >= 0),
                  ("sharpness_iters", self.sharpness_iters >= 0), ("trace_probes", self.trace_probes >= 0)]
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"invalid {name}: {getattr(self, name)!r}")
        if self.data not in datasets.SOURCES:
            raise ConfigError(f"unknown data source {self.data!r}; choose one of: {', '.join(datasets.SOURCES)}")
        datasets.check_pair(*self.pair)

    @property
    def widths(self) -> tuple[int, ...]:
        return (784, *self.hidden, 1)

    def batch_key(self) -> tuple:
        """Models with equal keys can share one batched program."""
        return (self.data, self.widths, self.batch_size, self.regularizer, self.optimizer)


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


def measure_model(params: MLPStack, task: datasets.BinaryTask, train_idx: torch.Tensor, cfg: RunConfig,
                  device=None) -> dict[str, float]:
    """Held-out and train-set measures and losses of one trained model (a stack of one)."""
    dev = torch.device(device or "cpu")
    p = params.to(dev)
    kw = dict(segments=cfg.segments, points=cfg.points, seed=cfg.measure_seed)
    out: dict[str, float] = {}
    xtr, ytr = task.pool_x[train_idx].to(dev), task.pool_y[train_idx].to(dev)
    out["loss_train"] = float(training.mse(p, xtr, ytr)[0])
    out["loss_test"] = float(training.mse(p, task.heldout_x.to(dev), task.heldout_y.to(dev))[0])
    out["fpl_lower_bound"] = measures.fpl_lower_bound(ytr)  # l_S of FPL for this training set (sec. 4.3)
    finite = all(bool(torch.isfinite(t).all()) for t in p.tensors())
    out.update(parameter_measures(p, xtr, ytr, cfg, finite))
    held = task.measure_points(cfg.measure_points).to(dev)
    sub = train_idx[datasets.balanced_prefix(task.pool_y[train_idx], cfg.measure_points)]
    for suffix, x in (("", held), ("_train", task.pool_x[sub].to(dev))):
        which = measures.MEASURES if suffix == "" else measures.MEASURES[:-1]
        if finite:
            vals = measures.measure_stack(p, x, which=which, **kw)
            out.update({k + suffix: float(v[0]) for k, v in vals.items()})
        else:
            out.update({k + suffix: float("nan") for k in which})
    return out


def parameter_measures(p: MLPStack, xtr: torch.Tensor, ytr: torch.Tensor, cfg: RunConfig,
                       finite: bool = True) -> dict[str, float]:
    """Parameter-space measures on the training set (curvature.py): norm, distance from init, Smith et al.'s
    minibatch gradient norm; sharpness and Hessian trace when cfg asks for them."""
    out = {"path_norm": float(measures.path_norms(p)[0]) if finite else float("nan"),
           "parameter_norm": float(curvature.parameter_norm(p)[0]),
           "distance_from_init": float(curvature.distance_from_init(p, [cfg.seed], cfg.alpha)[0])}
    names = ["minibatch_grad_norm"]
    if cfg.sharpness_iters:
        names += ["sharpness", "sharpness_rel_change", "sharpness_iterations"]
    if cfg.trace_probes:
        names += ["hessian_trace", "hessian_trace_se"]
    if not finite:
        return {**out, **{k: float("nan") for k in names}}
    x, y = xtr[None], ytr[None]
    out["minibatch_grad_norm"] = float(curvature.minibatch_gradient_norm(p, x, y, batch_size=cfg.batch_size,
                                                                         seed=cfg.measure_seed)[0])
    if cfg.sharpness_iters:
        s = curvature.sharpness(p, x, y, iters=cfg.sharpness_iters, seed=cfg.measure_seed)
        out.update(sharpness=float(s.value[0]), sharpness_rel_change=float(s.rel_change[0]),
                   sharpness_iterations=int(s.iterations[0]))
    if cfg.trace_probes:
        tr, se = curvature.hessian_trace(p, x, y, probes=cfg.trace_probes, seed=cfg.measure_seed)
        out.update(hessian_trace=float(tr[0]), hessian_trace_se=float(se[0]))
    return out


def train_and_measure(configs: list[RunConfig], *, device=None, data_dir=None, progress=None,
                      on_result=None) -> list[dict]:
    """Train every config (batched where they share data, architecture and batch size) and measure.

    Returns one record per config, in order: the config, status, epochs, steps, losses, measures,
    wall time and device, plus the trained parameters under 'params' (a stack of one, on the CPU).
    on_result(i, record), if given, is called the moment config i is trained and measured.
    """
    records: list[dict | None] = [None] * len(configs)
    for i, rec in iter_train_and_measure(configs, device=device, data_dir=data_dir, progress=progress):
        records[i] = rec
        if on_result is not None:
            on_result(i, rec)
    return records  # type: ignore[return-value]


def iter_train_and_measure(configs: list[RunConfig], *, device=None, data_dir=None, progress=None):
    """As train_and_measure, but yields (i, record) for config i the moment it is trained and measured."""
    dev = resolve_device(device)
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(c.batch_key(), []).append(i)
    for key, members in groups.items():
        tasks = {}
        for i in members:
            c = configs[i]
            if c.pair not in tasks:
                tasks[c.pair] = datasets.binary_task(c.data, *c.pair, data_dir=data_dir)
        # One input pool for the group: the pools of all pairs, concatenated.
        offsets, pools, start = {}, [], 0
        for pair, t in tasks.items():
            offsets[pair] = start
            pools.append(t.pool_x)
            start += t.pool_x.shape[0]
        pool = torch.cat(pools)
        specs, subsets = [], []
        for i in members:
            c = configs[i]
            t = tasks[c.pair]
            sub = t.subset(c.n_train, c.seed)
            subsets.append(sub)
            specs.append(training.TrainSpec(sub + offsets[c.pair], t.pool_y[sub], seed=c.seed, lr=c.lr,
                                            alpha=c.alpha, max_epochs=c.max_epochs, threshold=c.threshold,
                                            regularizer=c.regularizer, lam=c.lam,
                                            optimizer="sgd" if c.optimizer == "gd" else c.optimizer))
        trainer = training.BatchedTrainer(pool, key[1], key[2], dev)
        for res in trainer.iter_train(specs, progress=progress):
            i = members[res.index]
            c = configs[i]
            t0 = time.perf_counter()
            rec = {**asdict(c), "pair": list(c.pair), "hidden": list(c.hidden),
                   "status": res.status, "epochs": res.epochs, "steps": res.steps,
                   "loss_epoch": res.loss_epoch}
            rec.update(measure_model(res.params, tasks[c.pair], subsets[res.index], c, dev))
            rec.update(train_seconds=res.seconds, measure_seconds=time.perf_counter() - t0,
                       device=str(dev), params=res.params)
            yield i, rec


def save_models(path, records: list[dict]) -> None:
    """Save trained models with their configs and results (torch.save; loadable with weights_only)."""
    out = []
    for r in records:
        meta = {k: v for k, v in r.items() if k != "params"}
        out.append({"meta": meta, "params": r["params"].state_dict()})
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part-{os.getpid()}")
    torch.save({"format": SAVE_FORMAT, "models": out}, tmp)
    os.replace(tmp, path)  # never a half-written file at path


def load_models(path) -> list[dict]:
    """Records saved by save_models, each with 'meta' (dict) and 'params' (MLPStack of one)."""
    from .errors import DataError
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"no such file: {path}") from None
    except Exception as e:  # torch raises several types for a file that is not a checkpoint
        raise DataError(f"{path} is not a smoothness model file ({type(e).__name__}: {e})") from None
    if not isinstance(blob, dict) or blob.get("format") != SAVE_FORMAT:
        raise DataError(f"{path} is not a smoothness model file (expected format {SAVE_FORMAT})")
    return [{"meta": m["meta"], "params": MLPStack.from_state_dict(m["params"])} for m in blob["models"]]
