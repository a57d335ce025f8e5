"""Train models on MNIST-binary tasks and measure them as they finish: the train -> measure queue shared by the
CLI, the grid runner and the Python API.

The pieces live in their own modules and are re-exported here: the configuration and its key (runconfig.py),
the device (devices.py), measuring trained models (evaluate.py) and the files of `train --save` (modelfile.py).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from smoothness import training
from smoothness.data import images, lines
from smoothness.errors import ConfigError
from smoothness.experiments.configuration.config import ADDED_FIELDS, Record, RunConfig, config_key  # noqa: F401
from smoothness.experiments.running.evaluate import Trained, measure_models, measure_trained, parameter_measures  # noqa: F401
from smoothness.experiments.storage.modelfile import SAVE_FORMAT, check_save_path, load_models, save_models  # noqa: F401
from smoothness.experiments.storage.snapshots import SnapshotDir
from smoothness.models import same_outputs, shapes_digest
from smoothness.runtime.devices import check_matmul_precision, measure_batch_size, memory_budget, resolve_device  # noqa: F401


def train_and_measure(configs: list[RunConfig], *, device=None, data_dir=None, progress=None,
                      on_result=None, measure_batch: int | None = None) -> list[Record]:
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


@dataclass
class _Trained:
    """A trained model waiting to be measured."""

    i: int
    rec: Record
    model: Trained     # what measuring it needs
    at: float


def batch_limit(configs: list[RunConfig], device, fam=None) -> int:
    """How many of these models (one batch key) train at once: as many as fit in the memory budget
    (devices.memory_budget, training.model_bytes); the others wait for a place. A ConfigError if one alone does
    not fit. fam: their family, if built already (a factory's build calls the factory and checks its model)."""
    c = configs[0]
    fam = c.family() if fam is None else fam
    need = training.family_bytes(fam, max(x.n_train for x in configs), c.batch_size, c.optimizer,
                                 c.regularizer, c.penalty_points)
    budget = memory_budget(device)
    if need > budget:
        what = "-".join(map(str, c.widths)) + " net" if c.model is None else fam.describe()
        penalty = (f", {c.regularizer} with {c.penalty_points:,} points per penalty segment" if
                   c.regularizer in training.regularizers.PATH_LENGTH else "")
        lower = "penalty_points, " if penalty else ""
        raise ConfigError(f"one model ({what}, N = {max(x.n_train for x in configs):,}, "
                          f"batch {c.batch_size:,}{penalty}) needs about {need / 2**20:,.0f} MB, more than the "
                          f"{budget / 2**20:,.0f} MB this machine has for it: lower {lower}batch_size or the model's "
                          "size")
    return max(1, min(len(configs), budget // need))


def check_memory(configs: list[RunConfig], device) -> None:
    """batch_limit's refusal before any training, for every batch key among these models: a ConfigError for the
    first whose one model does not fit in the memory budget of `device`."""
    groups: dict[tuple, list[RunConfig]] = {}
    for c in configs:
        groups.setdefault(c.batch_key(), []).append(c)
    for members in groups.values():
        batch_limit(members, device)


def train_spec(c: RunConfig, sub: torch.Tensor, targets: torch.Tensor, offset: int = 0, *,
               max_epochs: int | None = None, resume: training.Snapshot | None = None) -> training.TrainSpec:
    """The TrainSpec of c's model: its training rows `sub` of its task's pool (shifted by `offset` where that pool
    is part of a larger one) with their targets, and its seed, rate, penalty and stopping rule (max_epochs: another
    epoch cap than c's)."""
    return training.TrainSpec(sub + offset, targets, seed=c.init_seed, lr=c.lr, alpha=c.alpha,
                              max_epochs=c.max_epochs if max_epochs is None else max_epochs, threshold=c.threshold,
                              regularizer=c.regularizer, lam=c.lam, penalty_points=c.penalty_points,
                              optimizer="sgd" if c.optimizer == "gd" else c.optimizer,
                              rho=c.rho if c.optimizer == "sam" else None, loss=c.loss, resume=resume)


def load_tasks(configs: list[RunConfig], data_dir=None) -> dict[tuple, images.BinaryTask | lines.LineTask]:
    """The task of every (data, pair) among configs (an MNIST-binary pair or a 1-D task), loaded once each."""
    tasks: dict[tuple, images.BinaryTask] = {}
    for c in configs:
        if c.task_id not in tasks:
            tasks[c.task_id] = c.task(data_dir)
    return tasks


def _measure_trained(queue: list[_Trained], dev):
    """Measure queued trained models as one call of measure_models; yield (i, full record) for each."""
    if not queue:
        return
    t0 = time.perf_counter()
    vals = measure_models([q.model for q in queue], dev)
    sec = (time.perf_counter() - t0) / len(queue)
    for q, v in zip(queue, vals):
        yield q.i, {**q.rec, **v, "measure_seconds": sec, "measure_batch": len(queue), "device": str(dev),
                    "params": q.model.params}


def iter_measure_trained(items, *, device=None, data_dir=None, measure_batch: int | None = None):
    """Measure models that were trained but not measured (a grid stopped in between): items are
    (cfg, record, params) with the record that iter_train_and_measure passed to on_trained. Yields
    (j, full record) for item j, in batches of measure_batch."""
    dev = resolve_device(device)
    k = measure_batch_size(measure_batch, dev)
    tasks = load_tasks([c for c, _, _ in items], data_dir)
    queue = []
    for j, (c, rec, params) in enumerate(items):
        task = tasks[c.task_id]
        queue.append(_Trained(j, rec, Trained(params, task, task.subset(c.n_train, c.seed), c), 0.0))
        if len(queue) >= k:
            yield from _measure_trained(queue, dev)
            queue = []
    yield from _measure_trained(queue, dev)


def iter_train_and_measure(configs: list[RunConfig], *, device=None, data_dir=None, progress=None,
                           measure_batch: int | None = None, on_trained=None, max_wait: float = MEASURE_WAIT,
                           snapshots: SnapshotDir | None = None):
    """As train_and_measure, but yields (i, record) for config i as soon as it is trained and measured.

    Trained models are measured together, measure_batch at a time (see measure_batch_size): a
    batch is measured when it is full, when its first model has waited max_wait seconds, and when
    training ends. on_trained(i, record, params), if given, is called the moment model i finishes
    training, with its configuration, status and training record (the grid runner stores it durably
    there, so that a grid stopped before the batch is measured does not train the model again).
    snapshots, if given, keeps snapshots of the models in training and resumes each model from its snapshot
    (snapshots.py); the record of a resumed model names the epoch it was resumed at (`resumed_at_epoch`).
    """
    dev = resolve_device(device)
    k = measure_batch_size(measure_batch, dev)
    check_matmul_precision({c.matmul_precision for c in configs}, dev)
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(c.batch_key(), []).append(i)
    tasks = load_tasks(configs, data_dir)
    queue: list[_Trained] = []
    for members in groups.values():
        # One input pool for the group: the pools of all pairs, concatenated.
        offsets, pools, start = {}, [], 0
        for c in (configs[i] for i in members):
            if c.task_id not in offsets:
                offsets[c.task_id] = start
                pools.append(tasks[c.task_id].pool_x)
                start += pools[-1].shape[0]
        specs, subsets = [], []
        for i in members:
            c = configs[i]
            t = tasks[c.task_id]
            sub = t.subset(c.n_train, c.seed)
            subsets.append(sub)
            specs.append(train_spec(c, sub, t.pool_y[sub], offsets[c.task_id],
                                    resume=snapshots.load(c) if snapshots is not None else None))
        fam = configs[members[0]].family()
        built = {"parameters": fam.n_params(), "shapes_digest": shapes_digest(fam.shapes())}
        if fam.init_outputs() is not None:
            built["init_outputs"] = fam.init_outputs()
        trainer = training.BatchedTrainer(torch.cat(pools), fam, c.batch_size, dev,
                                          matmul_precision=c.matmul_precision,
                                          max_batch=batch_limit([configs[i] for i in members], dev, fam),
                                          snapshot_every=snapshots.every if snapshots is not None else None)
        on_snapshot = None
        if snapshots is not None:
            def on_snapshot(j, snap, members=members, outputs=fam.init_outputs()):
                snapshots.save(configs[members[j]], snap, outputs)
        for res in trainer.iter_train(specs, progress=progress, on_snapshot=on_snapshot):
            i = members[res.index]
            c = configs[i]
            rec: Record = {**asdict(c), "pair": list(c.pair), "hidden": list(c.hidden),
                           "status": res.status, "epochs": res.epochs, "steps": res.steps,
                           "loss_epoch": res.loss_epoch, "train_seconds": res.seconds, **built}
            if specs[res.index].resume is not None:
                rec["resumed_at_epoch"] = specs[res.index].resume.epoch
            if on_trained is not None:
                on_trained(i, rec, res.params)
            queue.append(_Trained(i, rec, Trained(res.params, tasks[c.task_id], subsets[res.index], c),
                                  time.perf_counter()))
            if len(queue) >= k or time.perf_counter() - queue[0].at >= max_wait:
                yield from _measure_trained(queue, dev)
                queue = []
    yield from _measure_trained(queue, dev)


@dataclass
class Built:
    """What a grid's models were built as, by the store and the snapshots in training: key -> the stored record's
    shapes_digest and init_outputs (where a record holds them: earlier ones do not), and key -> each snapshot's
    tensor shapes (SnapshotDir.shapes) and init_outputs (SnapshotDir.init_outputs)."""

    digests: dict[str, str]
    outputs: dict[str, list]
    snapshot_shapes: dict[str, list]
    snapshot_outputs: dict[str, list]


def check_architectures(by_key: dict[str, RunConfig], todo: list[str], built: Built,
                        families: dict | None = None) -> None:
    """A ConfigError before any training when a family now builds another function than the grid's stored models
    or snapshots under the same settings (a factory whose code changed under a grid: other tensors, or the same
    tensors computing other outputs at its seed-0 initialization, Family.init_outputs), so that one store would
    hold models of two architectures under one configuration. by_key: the grid's configs; todo: the keys to train.
    Each architecture to train is built once, or taken from families (RunConfig.architecture() -> its built Family)."""
    arch = {k: c.architecture() for k, c in by_key.items()}
    families = families or {}
    for a in dict.fromkeys(arch[k] for k in todo):
        fam = families.get(a) or next(by_key[k] for k in todo if arch[k] == a).family()
        now, outputs = fam.shapes(), fam.init_outputs()
        same = [k for k in by_key if arch[k] == a]
        old = sorted({built.digests[k] for k in same if k in built.digests} - {shapes_digest(now)})
        what = f"the model {fam.describe()} now builds {fam.n_params():,} parameters in tensors {now}"
        if old:
            n = sum(built.digests.get(k) in old for k in same)
            raise ConfigError(f"{what}, but the store's {n} model(s) of it were trained with other tensors (shapes "
                              f"digest {old[0]}, now {shapes_digest(now)}): its code changed since, and one store "
                              "would mix two architectures under the same settings; train into a new --out, or give "
                              "the changed model its own factory name or kwargs")
        if outputs is not None and (odd := [k for k in same if k in built.outputs
                                             and not same_outputs(built.outputs[k], outputs)]):
            raise ConfigError(f"the model {fam.describe()} now computes another function than the store's "
                              f"{len(odd)} model(s) of it (the same tensors, but other outputs of its seed-0 "
                              f"initialization at fixed points: {_few(outputs)} against {_few(built.outputs[odd[0]])}):"
                              " its code changed since (an activation, say), and one store would mix two "
                              "architectures under the same settings; train into a new --out, or give the changed "
                              "model its own factory name or kwargs")
        snaps = [k for k in todo if arch[k] == a and k in built.snapshot_shapes and
                 [tuple(s) for s in built.snapshot_shapes[k]] != [tuple(s) for s in now]]
        if snaps:
            raise ConfigError(f"{what}, but the snapshot of {len(snaps)} model(s) in training (first: {snaps[0]}.pt) "
                              f"holds tensors {built.snapshot_shapes[snaps[0]]}: its code changed since; remove those "
                              "snapshots to train the models anew, or train into a new --out")
        snaps = [k for k in todo if arch[k] == a and outputs is not None and k in built.snapshot_outputs
                 and not same_outputs(built.snapshot_outputs[k], outputs)]
        if snaps:
            raise ConfigError(f"the model {fam.describe()} now computes another function than when the snapshot of "
                              f"{len(snaps)} model(s) in training (first: {snaps[0]}.pt) was written (other outputs of"
                              " its seed-0 initialization at fixed points): its code changed since; remove those "
                              "snapshots to train the models anew, or train into a new --out")


def _few(values: list, n: int = 3) -> str:
    """The first n of a list of floats (None: a non-finite value as a record holds it), for a line."""
    return "[" + ", ".join("null" if v is None else f"{v:.4g}" for v in values[:n]) + (
        ", ...]" if len(values) > n else "]")
