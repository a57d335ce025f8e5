"""Measuring trained models: held-out and training-set measures, losses and parameter-space measures. The paper's
MLPs are measured batched over the models that share architecture, training size and measure settings (the
registry's stack functions, closed forms); the models of any other family one by one as the nn.Modules they are,
through the same functions that measure a user's model (measures/single.py, curvature.py)."""
from __future__ import annotations

import weakref
from typing import NamedTuple

import torch

from smoothness.data import images, lines
from smoothness.experiments.configuration.config import RunConfig
from smoothness.measures import ofmodule, oned, paramspace, registry, single
from smoothness.models import MLPStack, dataset_mse
from smoothness.runtime import precision


class Trained(NamedTuple):
    """A trained model to measure: its weights (a stack of one), its task, its training subset, its config."""
    params: MLPStack
    task: images.BinaryTask
    train_idx: torch.Tensor
    cfg: RunConfig


def measure_trained(params: MLPStack, task: images.BinaryTask, train_idx: torch.Tensor, cfg: RunConfig,
                    device=None) -> dict[str, float]:
    """Held-out and train-set measures, losses and parameter-space measures of one trained model (a stack
    of one); measure_models does the same for many models at once."""
    return measure_models([Trained(params, task, train_idx, cfg)], device)[0]


@precision.strict_fp32()
def measure_models(items, device=None, chunk: int = 128) -> list[dict[str, float]]:
    """measure_trained for many models: items are Trained(params, task, train_idx, cfg) (or such 4-tuples) with
    params a stack of one.

    Models that share the architecture, training size and measure settings are measured together, as one
    stack of up to `chunk` models (batched over models and segments). Each model gets the numbers it gets
    alone: the segments are common random numbers, and the power iteration stops per model.
    """
    dev = torch.device(device or "cpu")
    items = [Trained(*it) for it in items]
    out_modules = {i: _measure_module(it, dev) for i, it in enumerate(items) if not _closed_form(it)}
    groups: dict[tuple, list[int]] = {}
    for i, (params, _, idx, c) in enumerate(items):
        if i in out_modules:
            continue
        key = (params.widths, int(idx.numel()), c.measure_points, c.segments, c.points, c.measure_seed,
               *registry.options_of(c).values(), c.batch_size)
        groups.setdefault(key, []).append(i)
    out: list[dict | None] = [out_modules.get(i) for i in range(len(items))]
    for members in groups.values():
        for a in range(0, len(members), chunk):
            ids = members[a:a + chunk]
            for i, rec in zip(ids, _measure_group([items[i] for i in ids], dev)):
                out[i] = rec
    return out  # type: ignore[return-value]


_ON_DEVICE: "weakref.WeakKeyDictionary[torch.Tensor, dict]" = weakref.WeakKeyDictionary()


def _on(dev: torch.device, t: torch.Tensor) -> torch.Tensor:
    """t on dev; a host tensor's device copy is kept while t lives, so that a task's pool, held-out set and
    measure points go to a GPU once, not with every batch of models measured."""
    if t.device == dev:
        return t
    copies = _ON_DEVICE.setdefault(t, {})
    if dev not in copies:
        copies[dev] = t.to(dev)
    return copies[dev]


def _by_size(xs: list[torch.Tensor]) -> dict[int, list[int]]:
    sizes: dict[int, list[int]] = {}
    for i, x in enumerate(xs):
        sizes.setdefault(x.shape[0], []).append(i)
    return sizes


def _measure_group(items: list[Trained], dev) -> list[dict[str, float]]:
    """Measures of models with equal widths, training size and measure settings, as one stack."""
    cfg = items[0].cfg
    recs: list[dict[str, float]] = [{} for _ in items]
    p = MLPStack.cat([it.params for it in items]).to(dev)
    xtr = torch.stack([_on(dev, it.task.pool_x)[_on(dev, it.train_idx)] for it in items])   # gathered on dev
    ytr = torch.stack([_on(dev, it.task.pool_y)[_on(dev, it.train_idx)] for it in items])
    for r, v in zip(recs, dataset_mse(p, xtr, ytr).tolist()):
        r["loss_train"] = v
    by_task: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        by_task.setdefault(id(it.task), []).append(i)
    for rows in by_task.values():   # held-out sets differ in size between pairs
        t = items[rows[0]].task
        losses = dataset_mse(p.select(rows), _on(dev, t.heldout_x), _on(dev, t.heldout_y)).tolist()
        for i, v in zip(rows, losses):
            recs[i]["loss_test"] = v
    for r, it in zip(recs, items):
        # l_S of FPL for this training set
        r["fpl_lower_bound"] = single.fpl_lower_bound(it.task.pool_y[it.train_idx])
    finite = torch.stack([torch.isfinite(w).flatten(1).all(1) for w in p.tensors()]).all(0).tolist()
    ok = [i for i, f in enumerate(finite) if f]
    param = parameter_measures(p, xtr, ytr, [it.cfg for it in items], finite)
    for r, vals in zip(recs, param):
        r.update(vals)
    for rows in by_task.values():   # 1-D tasks: the exact measures and S_min of each training set (lines.py)
        t = items[rows[0]].task
        if lines.is_line(items[rows[0]].cfg.data):
            for i, ex in zip(rows, oned.exact_of(p.select(rows), t, [items[i].train_idx for i in rows])):
                recs[i].update(ex, **oned.smallest_of(t, items[i].train_idx))
    kw = dict(segments=cfg.segments, points=cfg.points, seed=cfg.measure_seed)
    points = {key: items[rows[0]].task.measure_points(cfg.measure_points) for key, rows in by_task.items()}
    held = [points[id(it.task)] for it in items]   # one tensor per task: models of a pair share it
    train = [it.task.train_points(it.train_idx, cfg.measure_points) for it in items]
    for suffix, xs in (("", held), ("_train", train)):
        which = registry.MEASURES if suffix == "" else registry.SAMPLED
        for i in range(len(items)):
            if not finite[i]:
                recs[i].update({registry.on_points(col, suffix): float("nan") for k in which
                                for col in registry.columns(registry.get(k))})
        for rows in _by_size([xs[i] for i in ok]).values():
            rows = [ok[j] for j in rows]
            same = all(xs[i] is xs[rows[0]] for i in rows)
            x = xs[rows[0]] if same else torch.stack([xs[i] for i in rows])
            vals = registry.measure_stack(p.select(rows), _on(dev, x), which=which, **kw)
            for k, v in vals.items():
                for i, f in zip(rows, v.tolist()):
                    recs[i][registry.on_points(k, suffix)] = f
    return recs


def parameter_measures(p: MLPStack, xtr: torch.Tensor, ytr: torch.Tensor, cfgs: list[RunConfig],
                       finite: list[bool]) -> list[dict[str, float]]:
    """The measures of the weights and each model's training set xtr [M, n, d], ytr [M, n] (registry.parameter_measures:
    path norm, norm, distance from init, Smith et al.'s minibatch gradient norm; sharpness and Hessian trace when the
    configs ask for them, all configs alike). Models that are not finite get NaN."""
    cfg = cfgs[0]
    options = registry.options_of(cfg)
    names = registry.parameter_columns(options)
    out: list[dict[str, float]] = [dict.fromkeys(names, float("nan")) for _ in cfgs]
    ok = [i for i, f in enumerate(finite) if f]
    if not ok:
        return out
    cols = registry.parameter_measures(
        p.select(ok), xtr[ok], ytr[ok], batch_size=cfg.batch_size, seed=cfg.measure_seed,
        init_seeds=torch.tensor([cfgs[i].init_seed for i in ok], dtype=torch.int64),
        alphas=torch.tensor([cfgs[i].alpha for i in ok], dtype=torch.float64),
        options=options)
    for k, v in cols.items():
        for i, val in zip(ok, v.tolist()):
            out[i][k] = val
    return out


def _closed_form(it: Trained) -> bool:
    """Whether a trained model is measured by the batched closed forms: an MLP with one output under the MSE."""
    return isinstance(it.params, MLPStack) and it.cfg.outputs == 1 and it.cfg.loss == "mse"


def family_of_config(c: RunConfig):
    """The model family of a configuration (models.build)."""
    from smoothness.models import build
    return build(c.model, c.hidden, images.input_shape(c.data), c.outputs)


def _measure_module(it: Trained, dev) -> dict[str, float]:
    """The record's measures of one trained model of any family, measured as an nn.Module: the losses, and every
    registry row with a computation for a module (Measure.one; sharpness and the Hessian trace when the configuration
    asks for them)."""
    from smoothness.models import losses
    c, task = it.cfg, it.task
    fam = family_of_config(c)
    p = it.params.to(dev)
    mod = fam.module(p, 0).to(dev)
    xtr, ytr = _on(dev, task.pool_x)[_on(dev, it.train_idx)], _on(dev, task.pool_y)[_on(dev, it.train_idx)]
    ylabels = losses.measure_targets(ytr, c.outputs)
    rec: dict[str, float] = {}
    for name, x, y in (("loss_train", xtr, ytr), ("loss_test", _on(dev, task.heldout_x), _on(dev, task.heldout_y))):
        rec[name] = float(losses.dataset_loss(lambda xb: fam.values(p, xb), x, y, c.loss, chunk=1024)[0])
    rec["fpl_lower_bound"] = single.fpl_lower_bound(ytr) if c.outputs == 1 else float("nan")
    finite = all(bool(torch.isfinite(t).all()) for t in p.tensors())
    sampled = [registry.on_points(col, suffix) for suffix in ("", "_train") for k in registry.SAMPLED
               for col in registry.columns(registry.get(k))]
    if not finite:
        return {**rec, **dict.fromkeys(sampled, float("nan"))}
    kw = dict(output=None if c.outputs == 1 else "margin", loss=c.loss, segments=c.segments, points=c.points,
              seed=c.measure_seed)
    at = {suffix: ofmodule.ModuleContext(mod, x, **kw) for suffix, x in (
        ("", task.measure_points(c.measure_points).to(dev)),
        ("_train", task.train_points(it.train_idx, c.measure_points).to(dev)))}
    weights = ofmodule.ModuleContext(mod, xtr, ylabels, **kw, options=registry.options_of(c), params=p,
                                     start=fam.init([c.init_seed], c.alpha, device=dev))
    for m in registry.REGISTRY:   # each row's computation for a module (Measure.one), where the config asks for it
        if m.one is None or (m.option and not getattr(c, m.option)):
            continue
        # sampled measures at the held-out and the training points; the rest of the input space (the Lipschitz
        # bracket) at the held-out points; those of the weights and the loss on the training set
        on = at if m.sampled else {"": at[""]} if m.space == registry.INPUT else {"": weights}
        for suffix, ctx in on.items():
            for key, e in m.one(ctx).items():
                rec[registry.on_points(key, suffix)] = float(e)
                if key + "_se" in m.columns:
                    rec[registry.on_points(key + "_se", suffix)] = e.se
    rec["minibatch_gradient_norm"] = float(family_minibatch_gradient_norm(fam, p, xtr, ytr, c)[0])
    return rec


def family_minibatch_gradient_norm(fam, p, xtr: torch.Tensor, ytr: torch.Tensor, c: RunConfig) -> torch.Tensor:
    """Smith et al.'s minibatch gradient norm (paramspace.minibatch_gradient_norm) of a stack p of any family on
    the training set xtr [n, d], ytr [n], with the loss and batches the model trained on. [M]."""
    from smoothness.models import losses

    def batch_losses(q, xb, yb, valid):
        return losses.mean_loss(fam.values(q, xb), yb, c.loss, valid)[0]
    return paramspace.minibatch_gradient_norm(p, xtr, ytr, batch_size=c.batch_size, seed=c.measure_seed,
                                              losses=batch_losses)
