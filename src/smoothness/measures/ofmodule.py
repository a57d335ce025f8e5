"""The registry's measures of one model given as a module (any nn.Module or callable, a stack of one): what each
registry row computes for it (Measure.one in registry.py), from one ModuleContext.

The same rows measure a stack of MLPs through registry.Context; here the model is a module of any family, measured
by the functions of single.py (input space) and curvature.py (the loss's curvature). measure_model (model.py, the
`measure` command) and the grid's measuring of models that are no MLP (experiments/running/evaluate.py) both loop
over the rows: a measure added as a row with its `one` function is computed, recorded and reported by both.
"""
from __future__ import annotations

import torch

from smoothness.measures import curvature, inputspace, single
from smoothness.measures.estimate import Estimate, exact


class ModuleContext:
    """What the measures of one model read: the module f; the points x (a tensor or batches) and, for the loss's
    curvature, the targets y and the loss; the output measured (None: a scalar model's one output, the Frobenius
    norm of the Jacobian of K outputs); the estimators' settings (segments and points per segment of the path
    lengths, Lanczos steps, Hutchinson probes, seed, batch size; a grid's options, registry.options_of, take the place
    of steps and probes). `params` and `start` are the model's weights and
    its initial weights as stacks of one (models.Family), where known: the distance from the initialization needs
    them. Intermediate results that several rows share (both path lengths, both Lipschitz bounds) are kept."""

    def __init__(self, f, x, y=None, *, output=None, loss=None, segments: int = inputspace.DEFAULT_SEGMENTS,
                 points: int = inputspace.DEFAULT_POINTS, seed: int = 0, steps: int = curvature.DEFAULT_STEPS,
                 probes: int = curvature.DEFAULT_PROBES, batch_size: int | None = None, progress=None, params=None,
                 start=None, options: dict | None = None):
        self.f, self.x, self.y, self.output, self.loss = f, x, y, output, loss
        self.segments, self.points, self.seed, self.steps, self.probes = segments, points, seed, steps, probes
        self.batch_size, self.progress, self.params, self.start = batch_size, progress, params, start
        self.options = dict(options or {})   # a grid's {option: value} (registry.options_of): they set the work
        self._paths = self._lipschitz = None

    def path_lengths(self) -> dict[str, Estimate]:
        """FPL and GPL (eqs. 9-11) in one pass over the same segments ({'fpl': ..., 'gpl': ...})."""
        if self._paths is None:
            self._paths = single.path_lengths(self.f, self.x, self.segments, self.points, self.seed, self.output,
                                              progress=self.progress)
        return self._paths

    def lipschitz(self) -> tuple[Estimate, Estimate]:
        """The Lipschitz bracket (lower, upper) of one output (the margin of K outputs unless one is named)."""
        if self._lipschitz is None:
            out = single.scalar_output(self.f, self.x, self.output)
            self._lipschitz = single.lipschitz_bounds(self.f, self.x, out, progress=self.progress)
        return self._lipschitz

    def weights(self) -> list[torch.Tensor]:
        """The model's parameter tensors: of `params` (without its model axis) where given, else of f."""
        if self.params is not None:
            return [t[0] for t in self.params.tensors()]
        return list(self.f.parameters()) if isinstance(self.f, torch.nn.Module) else []


def gradient_norm(power: int, key: str):
    """GN (eq. 4; power 1) or GN^2 (power 2) at the points."""
    fn = single.gradient_norm if power == 1 else single.gradient_norm_squared
    return lambda c: {key: fn(c.f, c.x, c.output, progress=c.progress)}


def path_length(short: str, key: str):
    """FPL ('fpl', eq. 10) or GPL ('gpl', eq. 11), from the pass that gives both."""
    return lambda c: {key: c.path_lengths()[short]}


def lipschitz_bound(which: int, key: str):
    """The Lipschitz lower (0) or upper (1) bound, from the call that gives both."""
    return lambda c: {key: c.lipschitz()[which]}


@torch.no_grad()
def norm_product(c: ModuleContext) -> dict[str, Estimate]:
    """The product of the weight tensors' Frobenius norms (those with two or more axes), exact."""
    norms = [t.detach().double().norm() for t in c.weights() if t.dim() >= 2]
    return {"norm_product": exact(float(torch.stack(norms).prod())) if norms else exact(float("nan"))}


@torch.no_grad()
def parameter_norm(c: ModuleContext) -> dict[str, Estimate]:
    """The Euclidean norm of all parameters, exact."""
    w = c.weights()
    return {"parameter_norm": exact(float(torch.cat([t.detach().double().flatten() for t in w]).norm()) if w
                                    else float("nan"))}


@torch.no_grad()
def distance_from_init(c: ModuleContext) -> dict[str, Estimate]:
    """‖θ − θ₀‖, exact; needs the weights and the initial weights as stacks (ModuleContext.params, start)."""
    if c.params is None or c.start is None:
        return {}
    flat = [torch.cat([t.flatten(1) for t in s.tensors()], 1).double() for s in (c.params, c.start)]
    return {"distance_from_init": exact(float((flat[0] - flat[1]).norm(dim=1)[0]))}


def sharpness(c: ModuleContext) -> dict:
    """The top eigenvalue of the loss's Hessian (Lanczos, c.steps steps at most) at the points and targets."""
    steps = c.options.get("sharpness_iters") or c.steps
    return {"sharpness": curvature.sharpness(c.f, c.x, c.y, c.loss, steps=steps, seed=c.seed,
                                             batch_size=c.batch_size, progress=c.progress)}


def hessian_trace(c: ModuleContext) -> dict[str, Estimate]:
    """The trace of the loss's Hessian (Hutchinson, c.probes probes) at the points and targets."""
    probes = c.options.get("trace_probes") or c.probes
    return {"hessian_trace": curvature.hessian_trace(c.f, c.x, c.y, c.loss, probes=probes, seed=c.seed,
                                                     batch_size=c.batch_size, progress=c.progress)}
